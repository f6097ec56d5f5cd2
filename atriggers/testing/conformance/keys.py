"""The idempotency-key part of the storage conformance suite
(`IdempotencyConformance`, which `StorageConformance` includes).

Keyed fires (``fire(..., key=...)``) store a record of their key in the same
compare-and-swap write as the fire: `Change.keys`, which `atriggers.storage.codec`
stores as rows of the session's triggers part. These tests check what that needs
from a backend: key rows written, overwritten and blanked with the rest of a
change, read back by `load` and `load_all` (apart from the latest kwargs), not
written at all when the write conflicts; a repeated fire applied once, also
from two storage objects at once; a conflicting one writing nothing; retention
(on a `FakeClock`) blanking old keys.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from ... import _rules as rules
from ... import idempotency
from ...clock import FakeClock
from ...config import parse_configuration
from ...context import TaskContext
from ...errors import IdempotencyConflict
from ...instance import Status
from ...manager import TriggerManager
from ...state import Change, Draft, SessionState
from ...storage.base import Storage, VersionConflict
from ...tasks import TaskRegistry

if TYPE_CHECKING:
    from .storage import StorageFactory

__all__ = ["IdempotencyConformance"]

_EVERY: dict[str, dict[str, Any]] = {"t": {"after": [], "andEvery": "tick", "run": "conformance.keys.echo"}}


def _uid() -> str:
    return f"keys-{uuid.uuid4().hex[:12]}"


def _tasks() -> TaskRegistry:
    registry = TaskRegistry(entry_point_group=None)

    async def echo(context: TaskContext) -> dict[str, Any]:
        return {"from": context.instance_name}

    registry.register(echo, "conformance.keys.echo")
    return registry


def _keyed(
    state: SessionState, key: str, n: int, *, at: float = 1_000_000_000.0, max_keys: int = 8
) -> Change:
    """The change of a keyed fire of ``tick`` with ``{"n": n}`` (no manager)."""
    draft = Draft(state, at=at)
    signature = idempotency.signature(key, "tick", {"n": n})
    idempotency.fire_once(draft, signature, lambda d: rules.fire(d, "tick", {"n": n}), 3_600_000, max_keys)
    return draft.changes()


def _held(state: SessionState) -> list[tuple[str, tuple[str, ...]]]:
    return [(r.key, r.instances) for r in state.fire_keys.records()]


class IdempotencyConformance:
    """Mixed into `StorageConformance`; uses its ``storage`` and
    ``storage_factory`` fixtures."""

    async def test_key_rows_are_stored_with_the_change(self, storage: Storage) -> None:
        uid = _uid()
        configure = Draft(await storage.load(uid))
        rules.configure(configure, parse_configuration(_EVERY))
        await storage.store(uid, 0, configure.changes())
        state = await storage.load(uid)
        for n in range(10):  # 8 slots: the first two keys are replaced by the last two
            change = _keyed(state, f"k{n}", n)
            await storage.store(uid, state.version, change)
            state = change.state
        for loaded in (await storage.load(uid), await storage.load_all(uid)):
            assert _held(loaded) == [(f"k{n}", (f"t#{n}",)) for n in range(2, 10)]
            assert loaded.fire_keys == state.fire_keys
            assert set(loaded.latest_kwargs) == {"tick"}  # key rows are not triggers
        # A write that conflicts stores no key row either.
        stale = _keyed(await storage.load(uid), "late", 99)
        await storage.store(uid, state.version, _keyed(state, "first", 98))
        with pytest.raises(VersionConflict):
            await storage.store(uid, state.version, stale)
        keys = [k for k, _ in _held(await storage.load(uid))]
        assert "first" in keys and "late" not in keys

    async def test_a_keyed_fire_applies_once_and_a_conflict_writes_nothing(self, storage: Storage) -> None:
        uid = _uid()
        manager = TriggerManager(storage, uid, tasks=_tasks())
        await manager.update_configuration(_EVERY)
        first = await manager.fire("tick", {"n": 1}, key="order-1")
        await manager.join()
        storage.forget(uid)
        before = await storage.load_all(uid)
        again = await manager.fire("tick", {"n": 1}, key="order-1")
        assert [(i.name, i.status) for i in again] == [(first[0].name, Status.FINISHED)]
        for trigger, kwargs in (("tick", {"n": 2}), ("other", {"n": 1})):
            with pytest.raises(IdempotencyConflict):
                await manager.fire(trigger, kwargs, key="order-1")
        storage.forget(uid)
        after = await storage.load_all(uid)
        assert (after.version, after.debug_repr(), after.fire_keys) == (
            before.version,
            before.debug_repr(),
            before.fire_keys,
        )

    async def test_keyed_fires_retried_on_two_storage_objects_apply_once(
        self, storage_factory: StorageFactory, storage: Storage
    ) -> None:
        uid = _uid()
        await TriggerManager(storage, uid, tasks=_tasks()).update_configuration(_EVERY)
        other = storage_factory() if storage_factory.shared else storage
        if other is not storage:
            await other.open()
        try:
            answers = await asyncio.gather(
                *(
                    TriggerManager(s, uid, tasks=_tasks()).fire("tick", {"n": n}, key=f"k{n}")
                    for n in range(40)
                    for s in (storage, other, storage)
                )
            )
            for s in {storage, other}:
                await s.drain(30)
        finally:
            if other is not storage:
                await other.aclose()
        names = [tuple(i.name for i in answer) for answer in answers]
        assert all(names[3 * n] == names[3 * n + 1] == names[3 * n + 2] for n in range(40))
        state = await storage.load_all(uid)
        assert len(state.instances) == 40 and len(set(names)) == 40
        assert {i.status for i in state.instances.values()} == {Status.FINISHED}

    async def test_expired_keys_are_blanked_by_the_next_keyed_fire(self, storage: Storage) -> None:
        uid = _uid()
        clock = FakeClock()
        storage.clock = clock
        manager = TriggerManager(storage, uid, tasks=_tasks())
        manager.key_retention = 60.0
        await manager.update_configuration(_EVERY)
        await manager.fire("tick", {"n": 0}, key="old")
        await clock.advance(30)
        await manager.fire("tick", {"n": 1}, key="mid")
        await clock.advance(30)
        await manager.fire("tick", {"n": 2}, key="new")
        await manager.join()
        storage.forget(uid)
        assert [k for k, _ in _held(await storage.load(uid))] == ["mid", "new"]
        assert [i.name for i in await manager.fire("tick", {"n": 0}, key="old")] == ["t#3"]
        await manager.join()
