"""Fire an order's triggers into a session, then watch Celery workers run it.

Run it (with redis and a worker started, see README.md)::

    python fire.py [order-id]
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from tasks import CONFIGURATION, OrderManager

from atriggers import SessionState
from atriggers.storage import SQLiteStorage

DATABASE = Path(os.environ.get("ATRIGGERS_DB", "orders.db")).resolve()


def describe(state: SessionState) -> list[str]:
    return [
        f"  {i.name:<16} {i.status.value:<9} {i.result or ''}".rstrip()
        for i in sorted(state.instances.values(), key=lambda i: i.name)
    ]


async def main(order_id: str, patience: float = 30.0) -> int:
    async with SQLiteStorage(DATABASE) as storage:
        manager = OrderManager(storage, f"order-{order_id}")
        await manager.update_configuration(CONFIGURATION)
        await manager.fire("orderPlaced", {"orderId": order_id, "items": ["book", "lamp"]})
        await manager.fire("paymentReceived", {"email": "ada@example.com"})
        print(f"fired orderPlaced and paymentReceived into {manager.uid!r} ({DATABASE})")

        # Watch the session: every change made by the workers shows up here.
        shown: list[str] = []
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            state = await manager.get_state()
            lines = describe(state)
            if lines != shown:
                print(f"version {state.version}:", *lines, sep="\n")
                shown = lines
            if state.instances and not state.get_unresolved_instances():
                ship = state.instances_of_task("t_ship")
                print("done:", "shipped" if ship and ship[-1].result else "not shipped")
                return 0
            await asyncio.sleep(0.2)
        print(f"still unresolved after {patience}s: is a worker running?", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "1001")))
