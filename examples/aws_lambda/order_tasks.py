"""The tasks of the example: imported by the Lambda function (which runs them).

The app process does not need this module: it only names the tasks in its
configuration.
"""

from __future__ import annotations

import logging
from typing import Any

from atriggers import TaskContext, task

log = logging.getLogger(__name__)


@task("orders.charge", max_retries=3)
async def charge(context: TaskContext) -> dict[str, Any]:
    order = context.trigger_kwargs["orderPlaced"]
    payment = context.trigger_kwargs["paymentAuthorized"]
    if payment.get("declinedOnce") and context.instance.depth == 0:
        # A transient failure: run again in 2 seconds, in a new invocation.
        raise context.retry(RuntimeError("payment provider busy"), cooldown=2)
    total = sum(line["price"] * line["quantity"] for line in order["lines"])
    return {
        "orderId": order["orderId"],
        "email": order["email"],
        "charged": total,
        "card": payment["card"][-4:],
    }


@task("orders.send_receipt")
async def send_receipt(context: TaskContext) -> dict[str, Any]:
    charged = context.trigger_kwargs["charge"]
    with context.get_logger_context() as task_log:
        task_log.info("receipt for order %s: %.2f", charged["orderId"], charged["charged"])
    return {"sentTo": charged["email"]}
