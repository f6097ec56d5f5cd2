"""The Celery side of the example: the app, the runner, and the trigger tasks.

Both the worker (``celery -A tasks worker``) and the script that fires triggers
(``fire.py``) import this module, as usual with Celery.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from atriggers import TaskContext, TriggerManager, register_manager
from atriggers.runners import register_runner
from atriggers.runners.celery import CeleryRunner, celery_task

app = Celery("orders", broker=os.environ.get("ATRIGGERS_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    broker_connection_retry_on_startup=True,
    # Normal Celery routing applies to trigger tasks.
    task_routes={"orders.send_receipt": {"queue": "mail"}},
)

# "using": "celery" in a configuration (or default_runner below) finds this.
register_runner(CeleryRunner(app))


@register_manager
class OrderManager(TriggerManager):
    """Workers rebuild this manager by name, so cascades also go to Celery."""

    manager_name = "orders"
    default_runner = "celery"


@celery_task(app, "orders.reserve_stock", max_retries=2)
async def reserve_stock(context: TaskContext) -> dict[str, Any]:
    order = context.trigger_kwargs["orderPlaced"]
    if context.instance.depth == 0:
        # The warehouse API is flaky: atriggers replays this instance in 1 s
        # (a Celery countdown), keeping both attempts in the session.
        raise context.retry(exc=ConnectionError("warehouse timed out"), cooldown=1)
    await asyncio.sleep(0.1)  # pretend to call the warehouse
    return {"orderId": order["orderId"], "reserved": order["items"]}


@celery_task(app, "orders.ship")
async def ship(context: TaskContext) -> dict[str, Any]:
    reserved = context.trigger_kwargs["t_reserveStock"]
    carrier = context.trigger_kwargs["shipping"]["carrier"]  # from withParams
    with context.get_logger_context() as log:
        log.info("shipping %s with %s", reserved["orderId"], carrier)
    return {"orderId": reserved["orderId"], "carrier": carrier, "tracking": "TRK-1"}


@celery_task(app, "orders.send_receipt")
async def send_receipt(context: TaskContext) -> dict[str, Any]:
    payment = context.trigger_kwargs["paymentReceived"]
    return {"sentTo": payment["email"]}


CONFIGURATION: dict[str, dict[str, Any]] = {
    "t_reserveStock": {"after": ["orderPlaced", "paymentReceived"], "run": "orders.reserve_stock"},
    "t_ship": {
        "after": ["t_reserveStock"],
        "unless": ["orderCancelled"],
        "run": "orders.ship",
        "withParams": {"shipping": {"carrier": "Pigeon Express"}},
    },
    "t_sendReceipt": {"after": ["paymentReceived"], "run": "orders.send_receipt"},
}
