"""The app side: configure a session whose tasks run on AWS Lambda, and fire.

Run it against the local Lambda endpoint of the test suite (see README.md), or
against AWS with credentials and a deployed ``lambda_function.py``:

    python examples/aws_lambda/orders_app.py sqlite:////tmp/orders.db
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from atriggers import Status, Sweeper, TriggerManager
from atriggers.runners import register_runner
from atriggers.runners.aws_lambda import LambdaRunner
from atriggers.storage import open_storage

FUNCTION_NAME = os.environ.get("ORDERS_FUNCTION", "atriggers-orders")

CONFIGURATION = {
    "charge": {
        "after": ["orderPlaced", "paymentAuthorized"],
        "run": "orders.charge",
        "using": "lambda",
    },
    "send_receipt": {
        "after": ["charge"],
        "run": "orders.send_receipt",
        "using": "lambda",
        # Per-task function (overrides the runner's): here the same one.
        "lambdaFunction": FUNCTION_NAME,
    },
}


async def main(storage_url: str, uid: str) -> int:
    # A botocore client from the environment (credentials, region,
    # AWS_ENDPOINT_URL_LAMBDA); pass LambdaRunner(client) to choose your own,
    # e.g. boto3.client("lambda") or an aiobotocore client.
    register_runner(LambdaRunner(function_name=FUNCTION_NAME))
    # The sweeper sends a retry's clone when its cooldown is over (and recovers
    # runs lost with a function that died); a web app runs one in its lifespan.
    async with open_storage(storage_url) as storage, Sweeper(storage, interval=0.2):
        manager = TriggerManager(storage, uid)
        await manager.update_configuration(CONFIGURATION)
        await manager.fire(
            "orderPlaced",
            {
                "orderId": uid,
                "email": "ada@example.com",
                "lines": [{"sku": "tea", "price": 4.5, "quantity": 2}],
            },
        )
        await manager.fire("paymentAuthorized", {"card": "4242424242424242", "declinedOnce": True})

        # The function runs the tasks and writes their outcome to the storage.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = await manager.get_state()
            receipts = state.instances_of_task("send_receipt")
            failed = [i for i in state.instances.values() if i.status is Status.FAILED]
            if failed or (receipts and receipts[-1].is_resolved):
                break
            await asyncio.sleep(0.2)
        for instance in state.instances.values():
            print(f"{instance.name:16} {instance.status.value:9} {instance.result}")
            if instance.status is Status.FAILED:
                print(instance.metadata.get("exceptionInfo"))
        return 1 if failed or not receipts else 0


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "sqlite:///orders.db"
    sys.exit(asyncio.run(main(url, sys.argv[2] if len(sys.argv) > 2 else "order-1")))
