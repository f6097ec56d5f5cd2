"""A local stand-in for the AWS Lambda Invoke API, run as its own process.

    python tests/runners/lambda_endpoint.py --app lambda_functions \\
        --function atriggers-worker=handler --throttle busy --deny secret --drop lost

(``--path DIR`` adds a directory to import the ``--app`` module from.)

It serves ``POST /2015-03-31/functions/{name}/invocations`` on 127.0.0.1 (a free
port, printed as ``READY <port>`` on stdout), checks each request's SigV4
signature against the dummy credentials, and answers like Lambda: ``Event`` ->
202 and the event is queued; ``RequestResponse`` -> 200 with the handler's
result; errors as JSON with ``x-amzn-ErrorType`` (unknown function -> 404
ResourceNotFoundException, a ``--throttle`` function -> 429
TooManyRequestsException, a ``--deny`` function -> 403 AccessDeniedException, a
``--drop`` function accepts ``Event`` invocations (202) and never runs them, a
bad signature -> 403 InvalidSignatureException), so botocore parses real codes.

Events are handled by ``--containers`` worker processes, each a Lambda
execution environment: it imports the handler module once and calls handlers
one event at a time on its main thread, so handler objects (with their event
loops and storage pools) live across invocations. ``GET /_endpoint/invocations`` lists what was
received and what came of it. The process stops when its stdin closes.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import importlib
import json
import multiprocessing
import os
import queue
import re
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

ACCESS_KEY = "AKIDATRIGGERSTEST"
SECRET_KEY = "atriggers-test-secret"
REGION = "us-east-1"
ACCOUNT = "123456789012"
MAX_EVENT_PAYLOAD = 256 * 1024

_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?"
    r"Signature=(?P<sig>[0-9a-f]{64})$"
)


class LambdaContext:
    """The parts of Lambda's context object handlers use."""

    def __init__(self, function_name: str, timeout: float) -> None:
        self.function_name = function_name
        self.aws_request_id = str(uuid.uuid4())
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class Invocation:
    id: int
    function: str
    invocation_type: str
    payload: Any
    status: str = "queued"
    outcome: Any = None
    container: int | None = None
    done: Future[None] = field(default_factory=Future)

    def record(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "invocationType": self.invocation_type,
            "payload": self.payload,
            "status": self.status,
            "outcome": self.outcome,
            "container": self.container,
        }


def run_container(app: str, paths: list[str], attributes: list[str], events: Any, results: Any) -> None:
    """One execution environment (a process): imports the handler module once,
    then calls handlers one event at a time, on its main thread, like Lambda."""
    for path in paths:
        sys.path.insert(0, path)
    module = importlib.import_module(app)
    parent = os.getppid()
    results.put(("ready", os.getpid()))
    try:
        while True:
            try:
                item = events.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:  # the endpoint died: do not linger
                    break
                continue
            if item is None:
                break
            invocation_id, function, attribute, payload, timeout = item
            context = LambdaContext(function, timeout)
            try:
                outcome = getattr(module, attribute)(payload, context)
                status = "ok"
            except Exception as exc:  # noqa: BLE001 - reported like Lambda does
                status = "error"
                outcome = {
                    "errorType": type(exc).__name__,
                    "errorMessage": str(exc),
                    "stackTrace": traceback.format_exception(exc),
                }
                traceback.print_exc()
            results.put((invocation_id, status, outcome, os.getpid()))
    finally:
        for attribute in dict.fromkeys(attributes):
            close = getattr(getattr(module, attribute), "close", None)
            if close is not None:
                close()


class Endpoint:
    def __init__(self, args: argparse.Namespace) -> None:
        self.throttled = set(args.throttle)
        self.denied = set(args.deny)
        self.dropped = set(args.drop)
        self.log: dict[int, Invocation] = {}
        self.log_lock = threading.Lock()
        # NAME=attribute or NAME=attribute@timeout_seconds
        self.function_specs: dict[str, str] = {}
        self.timeouts: dict[str, float] = {}
        for spec in args.function:
            name, _, target = spec.partition("=")
            attribute, _, timeout = target.partition("@")
            self.function_specs[name] = attribute
            self.timeouts[name] = float(timeout) if timeout else args.timeout
        self.app = args.app
        self.paths = [str(Path(p).resolve()) for p in [*args.path, Path(__file__).parent]]
        # spawn: the containers start clean, without this process's threads.
        self.mp = multiprocessing.get_context("spawn")
        self.events = self.mp.Queue()
        self.results = self.mp.Queue()
        self.containers = [
            self.mp.Process(
                target=run_container,
                args=(self.app, self.paths, list(self.function_specs.values()), self.events, self.results),
                name=f"container-{n}",
            )
            for n in range(args.containers)
        ]

    def start_containers(self, timeout: float = 60.0) -> None:
        for container in self.containers:
            container.start()
        for _ in self.containers:
            kind, _pid = self.results.get(timeout=timeout)
            assert kind == "ready", kind
        threading.Thread(target=self._collect, name="collector", daemon=True).start()

    def _collect(self) -> None:
        while (result := self.results.get()) is not None:
            invocation_id, status, outcome, pid = result
            with self.log_lock:
                invocation = self.log[invocation_id]
                invocation.status, invocation.outcome, invocation.container = status, outcome, pid
            invocation.done.set_result(None)

    def submit(self, function: str, invocation_type: str, payload: Any) -> Invocation:
        with self.log_lock:
            invocation = Invocation(len(self.log), function, invocation_type, payload)
            self.log[invocation.id] = invocation
        self.events.put(
            (
                invocation.id,
                function,
                self.function_specs[function],
                payload,
                self.timeouts[function],
            )
        )
        return invocation

    def stop(self) -> None:
        for _ in self.containers:
            self.events.put(None)
        for container in self.containers:
            container.join(20)
            if container.is_alive():
                container.terminate()
                container.join(5)
        self.results.put(None)


def _signature_problem(handler: BaseHTTPRequestHandler, body: bytes) -> str | None:
    """Recompute the request's SigV4 signature; a reason if it does not match."""
    match = _AUTH.match(handler.headers.get("Authorization", ""))
    if match is None:
        return "Missing or malformed Authorization header"
    if match["key"] != ACCESS_KEY:
        return f"The security token included in the request is invalid: key {match['key']}"
    amz_date = handler.headers.get("X-Amz-Date", "")
    if not amz_date.startswith(match["date"]):
        return "X-Amz-Date does not match the credential scope"
    signed = match["signed"].split(";")
    canonical_headers = "".join(
        f"{name}:{' '.join((handler.headers.get(name) or '').split())}\n" for name in signed
    )
    path, _, query = handler.path.partition("?")
    canonical_uri = quote(unquote(path), safe="/~")
    canonical_request = "\n".join(
        [
            handler.command,
            canonical_uri,
            query,
            canonical_headers,
            match["signed"],
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{match['date']}/{match['region']}/{match['service']}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{SECRET_KEY}".encode()
    for part in (match["date"], match["region"], match["service"], "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match["sig"]):
        return (
            "The request signature we calculated does not match the signature you "
            "provided. Check your AWS Secret Access Key and signing method."
        )
    return None


def make_request_handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, **extra: str) -> None:
            body = {"Type": "User", "__type": code, "message": message, **extra}
            self._send(status, json.dumps(body).encode(), {"x-amzn-ErrorType": code})

        def do_GET(self) -> None:
            if self.path != "/_endpoint/invocations":
                self._error(404, "UnknownOperationException", f"no route for GET {self.path}")
                return
            with endpoint.log_lock:
                records = [invocation.record() for invocation in endpoint.log.values()]
            self._send(200, json.dumps(records).encode())

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            match = _INVOKE_PATH.match(self.path.partition("?")[0])
            if match is None:
                self._error(404, "UnknownOperationException", f"no route for POST {self.path}")
                return
            problem = _signature_problem(self, body)
            if problem is not None:
                bad_key = "token" in problem
                self._error(
                    403,
                    "UnrecognizedClientException" if bad_key else "InvalidSignatureException",
                    problem,
                )
                return
            function = unquote(match["name"])
            arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}"
            invocation_type = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
            if function in endpoint.denied:
                self._error(
                    403,
                    "AccessDeniedException",
                    f"User: arn:aws:iam::{ACCOUNT}:user/atriggers-test is not authorized to "
                    f"perform: lambda:InvokeFunction on resource: {arn} because no "
                    f"identity-based policy allows the lambda:InvokeFunction action",
                )
                return
            if function in endpoint.throttled:
                self._error(
                    429,
                    "TooManyRequestsException",
                    "Rate Exceeded.",
                    Reason="ReservedFunctionConcurrentInvocationLimitExceeded",
                )
                return
            if function not in endpoint.function_specs:
                self._error(404, "ResourceNotFoundException", f"Function not found: {arn}")
                return
            if invocation_type == "Event" and len(body) > MAX_EVENT_PAYLOAD:
                self._error(
                    413,
                    "RequestTooLargeException",
                    f"Request must be smaller than {MAX_EVENT_PAYLOAD} bytes for the InvokeAsync operation",
                )
                return
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                self._error(400, "InvalidRequestContentException", "Could not parse request body into json")
                return
            if invocation_type == "DryRun":
                self._send(204)
                return
            if invocation_type not in ("Event", "RequestResponse"):
                self._error(400, "InvalidParameterValueException", f"bad invocation type {invocation_type}")
                return
            if invocation_type == "Event" and function in endpoint.dropped:
                with endpoint.log_lock:
                    dropped = Invocation(len(endpoint.log), function, invocation_type, payload, "dropped")
                    endpoint.log[dropped.id] = dropped
                self._send(202)
                return
            invocation = endpoint.submit(function, invocation_type, payload)
            if invocation_type == "Event":
                self._send(202)
                return
            invocation.done.result(timeout=endpoint.timeouts[function] + 10)
            headers = {"X-Amz-Executed-Version": "$LATEST"}
            if invocation.status == "error":
                headers["X-Amz-Function-Error"] = "Unhandled"
            self._send(200, json.dumps(invocation.outcome).encode(), headers)

    return RequestHandler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--app", required=True, help="module holding the handlers")
    parser.add_argument("--function", action="append", default=[], help="NAME=handler_attribute[@timeout]")
    parser.add_argument("--throttle", action="append", default=[], help="function answering 429")
    parser.add_argument("--deny", action="append", default=[], help="function answering 403")
    parser.add_argument(
        "--drop", action="append", default=[], help="function accepting events, never running them"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="function timeout, seconds")
    parser.add_argument("--path", action="append", default=[], help="directory to import from")
    parser.add_argument("--containers", type=int, default=2, help="execution environments (processes)")
    args = parser.parse_args()

    endpoint = Endpoint(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_request_handler(endpoint))
    server.daemon_threads = True
    port = server.server_address[1]
    # Functions reach "Lambda" (for cascades) at this very endpoint; botocore
    # clients made from the environment too. Set before the containers spawn.
    os.environ["ATRIGGERS_TEST_LAMBDA_ENDPOINT"] = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL_LAMBDA"] = f"http://127.0.0.1:{port}"
    try:
        endpoint.start_containers()
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        print(f"READY {port}", flush=True)
        sys.stdin.buffer.read()  # until the parent closes it (or dies)
    finally:
        server.shutdown()
        server.server_close()
        endpoint.stop()


if __name__ == "__main__":
    main()
