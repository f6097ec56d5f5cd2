"""An Event invocation answered with ``X-Amz-Function-Error`` (emulators and
proxies that run the function at once do this): the instance fails with the
function's own error type and message, through a real botocore client over HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from lambda_fixtures import botocore_client

from atriggers import Status, TriggerManager
from atriggers.runners import register_runner
from atriggers.runners.aws_lambda import LambdaRunner
from atriggers.storage import SQLiteStorage


class _RunsAtOnce(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"errorType": "ValueError", "errorMessage": "card declined"}).encode()
        self.send_response(200)
        self.send_header("X-Amz-Function-Error", "Unhandled")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def emulator() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RunsAtOnce)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_function_error_answer_keeps_its_type_and_message(
    emulator: str, sqlite_storage: SQLiteStorage
) -> None:
    client = botocore_client(emulator)
    try:
        register_runner(LambdaRunner(client, "orders"))
        manager = TriggerManager(sqlite_storage, "emulated")
        await manager.update_configuration({"charge": {"after": ["go"], "run": "x", "using": "lambda"}})
        await manager.fire("go")
        failed = await manager.get_instance("charge#0")
    finally:
        client.close()
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionType"] == "atriggers.runners.aws_lambda.LambdaInvokeError"
    context = failed.metadata["exceptionContext"]
    assert (context["awsErrorCode"], context["awsErrorMessage"]) == ("ValueError", "card declined")
    assert "card declined" in failed.metadata["exceptionInfo"]
