"""The deployed side: the Lambda function's handler module.

Deploy this file, ``order_tasks.py`` and atriggers (with the storage driver your
app uses) in the function's package, and set the function's handler to
``lambda_function.handler``.
"""

from __future__ import annotations

import os

import order_tasks  # noqa: F401 - registers the tasks this function runs

from atriggers.runners import register_runner
from atriggers.runners.aws_lambda import LambdaRunner, make_handler

FUNCTION_NAME = os.environ.get("ORDERS_FUNCTION", "atriggers-orders")


async def startup() -> None:
    # Cascades and retries of "lambda" tasks are sent from inside the function:
    # it needs the runner too. Without a client, LambdaRunner makes a botocore
    # client from the environment (the function's role, region, and
    # AWS_ENDPOINT_URL_LAMBDA if set).
    register_runner(LambdaRunner(function_name=FUNCTION_NAME))


# Module level: built once per execution environment, so its event loop and its
# open storages serve every warm invocation.
handler = make_handler(startup=startup)
