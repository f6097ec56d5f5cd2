"""examples/aws_lambda runs as its README says: the app process configures and
fires, the function (in the local Lambda endpoint process) runs the tasks, a
retry with a cooldown included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lambda_fixtures import ACCESS_KEY, REGION, SECRET_KEY, LambdaEndpoint

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "aws_lambda"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
}


def test_example_runs_end_to_end(tmp_path: Path) -> None:
    endpoint = LambdaEndpoint(
        "--path",
        str(EXAMPLE),
        "--app",
        "lambda_function",
        "--function",
        "atriggers-orders=handler",
        "--containers",
        "1",
        env=CREDENTIALS,
    )
    endpoint.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(CREDENTIALS, AWS_ENDPOINT_URL_LAMBDA=endpoint.url)
        app = subprocess.run(
            [sys.executable, str(EXAMPLE / "orders_app.py"), f"sqlite:///{tmp_path / 'orders.db'}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        endpoint.stop()
    assert app.returncode == 0, app.stdout + app.stderr + "".join(endpoint.stderr_lines)
    lines = app.stdout.splitlines()
    assert any(line.startswith("charge#0") and "replayed" in line for line in lines), lines
    assert any(line.startswith("charge#1") and "'charged': 9.0" in line for line in lines), lines
    assert any(
        line.startswith("send_receipt#0") and "finished" in line and "ada@example.com" in line
        for line in lines
    ), lines
    assert endpoint.returncode == 0
