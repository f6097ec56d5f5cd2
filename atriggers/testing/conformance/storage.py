"""The storage conformance suite: what every `Storage` backend must do.

Memory, SQLite and Redis storages all pass it; a third-party backend runs the same
tests by subclassing `StorageConformance` in a test module and providing a
``storage_factory`` fixture::

    import pytest
    from atriggers.testing.conformance import StorageConformance, StorageFactory

    class TestMyStorage(StorageConformance):
        @pytest.fixture
        def storage_factory(self, tmp_path):
            # A new, empty store per test; every storage made by the factory
            # reaches that same store.
            return StorageFactory(lambda: MyStorage(tmp_path / "data"))

The suite needs pytest and pytest-asyncio. It covers: the snapshot contract of
`load`, `load_all` and `list_sessions`; compare-and-swap (a stale write raises
`VersionConflict` and writes nothing), also between two storage objects on one
store; the trigger semantics driven through a `TriggerManager`; hundreds of
concurrent fires; several OS processes firing into one session (each process opens
``open_storage(storage.url)``, so the backend must be reachable by URL there: set
`StorageFactory.child_imports` to modules that register it, or rely on the
``atriggers.storages`` entry-point group); bad input leaving a session
untouched; and the due index behind recovery (`DueIndexConformance`, in
``due.py``): entries written and deleted atomically with the state they belong
to, `claim_due` by time, by key and for owners whose lease lapsed, claims that
never overlap between storage objects, and several `Sweeper`s handling every
due entry of hundreds of sessions exactly once; the session index
(`SessionIndexConformance`, in ``index.py``): summaries written with each change,
paged by uid and filtered; and the idempotency keys of keyed fires
(`IdempotencyConformance`, in ``keys.py``): stored in the same write as their
fire, applied once across storage objects, expired keys blanked.

Backends that cannot share data between objects (like `MemoryStorage`) set
``shared=False`` and ``cross_process=False``: those tests are skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from ... import _rules as rules
from ..._tracecontext import TracedKwargs
from ...config import parse_configuration
from ...context import TaskContext
from ...errors import (
    ConcurrencyError,
    ConfigurationError,
    InstanceNotFound,
    InvalidInput,
    InvalidStatus,
)
from ...instance import Status
from ...manager import TriggerManager
from ...state import Change, Draft, SessionState
from ...storage.base import Storage, VersionConflict
from ...tasks import TaskRegistry
from .due import DueIndexConformance
from .index import SessionIndexConformance
from .keys import IdempotencyConformance

__all__ = ["StorageConformance", "StorageFactory"]


@dataclass
class StorageFactory:
    """Makes unopened storages that all reach one store.

    `shared`: two storages made by the factory see each other's writes (false for
    an in-process store). `cross_process`: ``open_storage(storage.url)`` in another
    OS process reaches the same store. `child_imports`: modules that such a
    process imports first (e.g. one calling `register_storage`).
    """

    make: Callable[[], Storage]
    shared: bool = True
    cross_process: bool = True
    child_imports: Sequence[str] = field(default_factory=tuple)

    def __call__(self) -> Storage:
        return self.make()


def _uid() -> str:
    return f"conformance-{uuid.uuid4().hex[:12]}"


def _snapshot(state: SessionState) -> tuple[int, dict[str, Any], list[str]]:
    """What "unchanged" compares: version, full contents, instance counts."""
    data = state.debug_repr()
    data["counts"] = dict(state.instance_counts)
    return state.version, data, sorted(state.instances)


class _Recorder:
    """Tasks for the suite, in a private registry, recording each run."""

    def __init__(self) -> None:
        self.registry = TaskRegistry(entry_point_group=None)
        self.runs: list[str] = []
        self.kwargs: dict[str, dict[str, Any]] = {}
        self.registry.register(self._echo, "conformance.echo")
        self.registry.register(self._fragile, "conformance.fragile")

    async def _echo(self, context: TaskContext) -> dict[str, Any]:
        self.runs.append(context.instance_name)
        self.kwargs[context.instance_name] = context.trigger_kwargs
        await asyncio.sleep(0)
        return {"from": context.instance_name}

    async def _fragile(self, context: TaskContext) -> dict[str, Any]:
        self.runs.append(context.instance_name)
        if any(kw.get("fail") for kw in context.trigger_kwargs.values()):
            raise ValueError(f"{context.instance_name} was asked to fail")
        return {"from": context.instance_name}


def _change(state: SessionState, apply: Callable[[Draft], object]) -> Change:
    draft = Draft(state)
    apply(draft)
    return draft.changes()


async def _apply(storage: Storage, uid: str, apply: Callable[[Draft], object]) -> Change:
    """Apply a rule to the stored session and store the change (no manager)."""
    state = await storage.load(uid)
    change = _change(state, apply)
    await storage.store(uid, state.version, change)
    return change


_TICKS = {"count": {"after": ["tick"], "andEvery": "tick", "run": "conformance.echo"}}


class StorageConformance(DueIndexConformance, SessionIndexConformance, IdempotencyConformance):
    """Subclass it (as ``Test...``) and provide a ``storage_factory`` fixture
    returning a `StorageFactory`. Every test is a coroutine run by pytest-asyncio.
    The due index's tests come from `DueIndexConformance`, the session index's
    from `SessionIndexConformance`, the idempotency keys' from
    `IdempotencyConformance`."""

    pytestmark = pytest.mark.asyncio

    #: Processes and fires per process of the cross-process test.
    processes: int = 3
    fires_per_process: int = 30
    #: Fires in flight at once in each process.
    concurrency_per_process: int = 4
    #: `TriggerManager.max_attempts` in the processes (the manager's default).
    max_attempts: int = TriggerManager.max_attempts
    #: Concurrent fires of the concurrency tests.
    concurrent_fires: int = 200

    @pytest_asyncio.fixture
    async def storage(self, storage_factory: StorageFactory) -> AsyncIterator[Storage]:
        async with storage_factory() as storage:
            yield storage

    @pytest.fixture
    def recorder(self) -> _Recorder:
        return _Recorder()

    # -- the snapshot contract ---------------------------------------------------------

    async def test_unknown_session_is_empty(self, storage: Storage) -> None:
        uid = _uid()
        state = await storage.load(uid, ["t#0"])
        assert (state.uid, state.version, state.complete) == (uid, 0, False)
        assert not state.tasks and not state.instances and not state.latest_kwargs
        everything = await storage.load_all(uid)
        assert everything.version == 0 and everything.complete
        assert not everything.instances
        assert uid not in await storage.list_sessions()

    async def test_store_then_load(self, storage: Storage) -> None:
        uid = _uid()
        tasks = parse_configuration(_TICKS)
        first = _change(await storage.load(uid), lambda d: rules.configure(d, tasks))
        await storage.store(uid, 0, first)
        second = _change(await storage.load(uid), lambda d: rules.fire(d, "tick", {"n": 1, "text": "héllo"}))
        await storage.store(uid, 1, second)
        state = await storage.load(uid)
        assert state.version == 2 and not state.complete
        assert set(state.tasks) == {"count"}
        assert state.latest_kwargs == {"tick": {"n": 1, "text": "héllo"}}
        assert state.instance_counts == {"count": 1}
        assert state.instances["count#0"].status is Status.SCHEDULED
        assert state.instances["count#0"].kwargs == {"tick": {"n": 1, "text": "héllo"}}
        assert _snapshot(await storage.load_all(uid)) == _snapshot(second.state)

    async def test_trace_context_travels_with_trigger_kwargs(self, storage: Storage) -> None:
        """The latest kwargs of a trigger keep the trace context of the fire that
        set them (OpenTelemetry links; stored inside their JSON object by the
        shared codec, taken out again when read)."""
        uid = _uid()
        traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
        await _apply(storage, uid, lambda d: d.record_fire("tick", TracedKwargs({"n": 1}, traceparent)))
        await _apply(storage, uid, lambda d: d.record_fire("tock", {"n": 2}))
        state = await storage.load_all(uid)
        assert state.latest_kwargs == {"tick": {"n": 1}, "tock": {"n": 2}}
        assert getattr(state.latest_kwargs["tick"], "trace", None) == traceparent
        assert getattr(state.latest_kwargs["tock"], "trace", None) is None

    async def test_load_skips_resolved_instances_unless_named(
        self, storage: Storage, recorder: _Recorder
    ) -> None:
        uid = _uid()
        manager = TriggerManager(storage, uid, tasks=recorder.registry)
        await manager.update_configuration(
            {
                **_TICKS,
                "waiting": {"after": ["tick", "never"], "andEvery": "tick", "run": "conformance.echo"},
            }
        )
        for n in range(5):
            await manager.fire("tick", {"n": n})
        await manager.join()
        storage.forget(uid)
        state = await storage.load(uid)
        assert sorted(state.instances) == [f"waiting#{n}" for n in range(5)]
        assert all(not i.is_resolved for i in state.instances.values())
        named = await storage.load(uid, ["count#3", "count#404"])
        assert named.instances["count#3"].status is Status.FINISHED
        assert "count#404" not in named.instances and "count#2" not in named.instances
        everything = await storage.load_all(uid)
        assert everything.complete and len(everything.instances) == 10
        assert everything.version == state.version == named.version

    async def test_list_sessions(self, storage: Storage) -> None:
        uids = sorted(["b-session", "a:session", "x{y}z", "ünïcode", "star*[?]", _uid()])
        tasks = parse_configuration(_TICKS)
        for uid in uids:
            await _apply(storage, uid, lambda d: rules.configure(d, tasks))
        await storage.load("never-stored")
        assert await storage.list_sessions() == uids

    async def test_large_change_and_large_session(self, storage: Storage) -> None:
        uid = _uid()
        size = 1200  # > 1000: backends that slice their reads must cross a slice
        tasks = parse_configuration(
            {
                "waiting": {
                    "after": ["tick", "never"],
                    "andEvery": "tick",
                    "unless": ["stop"],
                    "run": "x",
                }
            }
        )
        await _apply(storage, uid, lambda d: rules.configure(d, tasks))

        def many_fires(draft: Draft) -> None:
            for n in range(size):
                rules.fire(draft, "tick", {"n": n})

        await _apply(storage, uid, many_fires)  # one change, thousands of instances
        storage.forget(uid)
        state = await storage.load(uid)
        assert len(state.instances) == size and state.instance_counts == {"waiting": size}
        assert state.instances[f"waiting#{size - 1}"].kwargs == {"tick": {"n": size - 1}}
        await _apply(storage, uid, lambda d: rules.fire(d, "stop", {}))
        assert not (await storage.load(uid)).instances
        everything = await storage.load_all(uid)
        assert len(everything.instances) == size and everything.version == 3
        assert {i.status for i in everything.instances.values()} == {Status.ABANDONED}

    # -- compare-and-swap -----------------------------------------------------------------

    async def test_stale_write_conflicts_and_writes_nothing(self, storage: Storage) -> None:
        uid = _uid()
        tasks = parse_configuration(_TICKS)
        base = await storage.load(uid)
        await storage.store(uid, 0, _change(base, lambda d: rules.configure(d, tasks)))
        with pytest.raises(VersionConflict):  # creating a session that exists
            await storage.store(uid, 0, _change(base, lambda d: rules.configure(d, tasks)))
        v1 = await storage.load(uid)
        winner = _change(v1, lambda d: rules.fire(d, "tick", {"by": "winner"}))
        loser = _change(v1, lambda d: rules.fire(d, "tick", {"by": "loser"}))
        await storage.store(uid, 1, winner)
        before = _snapshot(await storage.load_all(uid))
        with pytest.raises(VersionConflict) as caught:
            await storage.store(uid, 1, loser)
        assert caught.value.uid == uid and caught.value.expected == 1
        if caught.value.fresh is not None:
            assert caught.value.fresh.version == 2
            assert caught.value.fresh.latest_kwargs == {"tick": {"by": "winner"}}
        assert _snapshot(await storage.load_all(uid)) == before
        with pytest.raises(VersionConflict):  # from the future
            await storage.store(uid, 5, _change(await storage.load(uid), lambda d: None))

    async def test_conflict_between_two_storage_objects(self, storage_factory: StorageFactory) -> None:
        self._require_shared(storage_factory)
        uid = _uid()
        tasks = parse_configuration(_TICKS)
        async with storage_factory() as one, storage_factory() as two:
            await _apply(one, uid, lambda d: rules.configure(d, tasks))
            seen_by_two = await two.load(uid)
            assert seen_by_two.version == 1 and set(seen_by_two.tasks) == {"count"}
            await _apply(one, uid, lambda d: rules.fire(d, "tick", {}))
            before = _snapshot(await one.load_all(uid))
            stale = _change(seen_by_two, lambda d: rules.fire(d, "tick", {"stale": True}))
            with pytest.raises(VersionConflict):
                await two.store(uid, 1, stale)
            assert _snapshot(await two.load_all(uid)) == before
            assert _snapshot(await one.load_all(uid)) == before

    async def test_managers_on_two_storage_objects_lose_nothing(
        self, storage_factory: StorageFactory, recorder: _Recorder
    ) -> None:
        self._require_shared(storage_factory)
        uid = _uid()
        async with storage_factory() as one, storage_factory() as two:
            first = TriggerManager(one, uid, tasks=recorder.registry)
            second = TriggerManager(two, uid, tasks=recorder.registry)
            await first.update_configuration(_TICKS)
            # Each fire goes through a cache the other storage has made stale.
            for n in range(6):
                await (first if n % 2 else second).fire("tick", {"n": n})
            await first.join()
            await second.join()
            state = await first.get_state()
        assert sorted(state.instances) == [f"count#{n}" for n in range(6)]
        assert all(i.status is Status.FINISHED for i in state.instances.values())
        assert sorted(recorder.runs) == sorted(state.instances)

    async def test_data_survives_reopening(self, storage_factory: StorageFactory) -> None:
        self._require_shared(storage_factory)
        uid = _uid()
        tasks = parse_configuration(_TICKS)
        async with storage_factory() as storage:
            await _apply(storage, uid, lambda d: rules.configure(d, tasks))
            change = _change(await storage.load(uid), lambda d: rules.fire(d, "tick", {"n": 1}))
            await storage.store(uid, 1, change)
            written = _snapshot(await storage.load_all(uid))
        async with storage_factory() as reopened:
            assert _snapshot(await reopened.load_all(uid)) == written
            assert uid in await reopened.list_sessions()

    # -- semantics through a manager ---------------------------------------------------------

    async def test_trigger_semantics(self, storage: Storage, recorder: _Recorder) -> None:
        uid = _uid()
        manager = TriggerManager(storage, uid, tasks=recorder.registry)
        await manager.update_configuration(
            {
                "both": {"after": ["a", "b"], "run": "conformance.echo"},
                "every": {
                    "after": ["a"],
                    "andEvery": "tick",
                    "unless": ["stop"],
                    "run": "conformance.echo",
                },
                "params": {
                    "after": ["a"],
                    "run": "conformance.echo",
                    "withParams": {"a": {"x": "default", "extra": 1}, "config": {"model": "m1"}},
                },
                "cascade": {"after": ["both"], "run": "conformance.echo"},
            }
        )
        assert await manager.fire("b", {"b": 1}) == []
        scheduled = await manager.fire("a", {"x": "fired"})
        assert sorted(i.name for i in scheduled) == ["both#0", "params#0"]
        await manager.join()
        assert recorder.kwargs["params#0"] == {
            "a": {"x": "fired", "extra": 1},
            "config": {"model": "m1"},
        }
        assert recorder.kwargs["both#0"] == {"a": {"x": "fired"}, "b": {"b": 1}}
        assert recorder.kwargs["cascade#0"]["both"] == {"from": "both#0"}
        for n in range(3):
            await manager.fire("tick", {"n": n})
        await manager.join()
        await manager.fire("stop")
        await manager.fire("tick", {"n": 3})  # after `unless`: nothing new runs
        await manager.join()
        state = await manager.get_state()
        status = {name: i.status for name, i in state.instances.items()}
        assert [status[f"every#{n}"] for n in range(3)] == [Status.FINISHED] * 3
        assert all(
            status[n] is not Status.FINISHED
            for n in status
            if n.startswith("every#") and int(n.partition("#")[2]) >= 3
        )
        assert sorted(recorder.runs) == sorted(n for n, s in status.items() if s is Status.FINISHED)
        assert Counter(recorder.runs).most_common(1)[0][1] == 1
        assert state.latest_kwargs["tick"] == {"n": 3}

    async def test_replay_and_skip(self, storage: Storage, recorder: _Recorder) -> None:
        uid = _uid()
        manager = TriggerManager(storage, uid, tasks=recorder.registry)
        await manager.update_configuration(
            {
                "fragile": {"after": ["go"], "andEvery": "go", "run": "conformance.fragile"},
                "next": {"after": ["fragile"], "andEvery": "fragile", "run": "conformance.echo"},
            }
        )
        await manager.fire("go", {"fail": True})
        await manager.fire("go", {"fail": True})
        await manager.join()
        failed = await manager.get_instance("fragile#0")
        assert failed.status is Status.FAILED
        assert failed.metadata["exceptionType"] == "builtins.ValueError"
        clone = await manager.replay_failed_instance("fragile#0", {"go": {"fail": False}})
        await manager.join()
        assert clone.name == "fragile#2" and clone.metadata["parent"] == "fragile#0"
        skipped = await manager.skip_failed_instance("fragile#1", cascade=True, result={"r": 1})
        await manager.join()
        assert skipped.status is Status.SKIPPED
        state = await manager.get_state()
        status = {name: i.status for name, i in state.instances.items()}
        assert status == {
            "fragile#0": Status.REPLAYED,
            "fragile#1": Status.SKIPPED,
            "fragile#2": Status.FINISHED,
            "next#0": Status.FINISHED,
            "next#1": Status.FINISHED,
        }
        cascaded = sorted((recorder.kwargs[n]["fragile"] for n in ("next#0", "next#1")), key=json.dumps)
        assert cascaded == [{"from": "fragile#2"}, {"r": 1}]
        # Only what is unresolved is loaded for the next operation.
        storage.forget(uid)
        assert not (await storage.load(uid)).instances

    # -- bad input -----------------------------------------------------------------------------

    async def test_bad_input_changes_nothing(
        self, storage_factory: StorageFactory, storage: Storage, recorder: _Recorder
    ) -> None:
        uid = _uid()
        manager = TriggerManager(storage, uid, tasks=recorder.registry)
        await manager.update_configuration(
            {
                **_TICKS,
                "fragile": {"after": ["go"], "run": "conformance.fragile"},
            }
        )
        await manager.fire("tick", {"n": 0})
        await manager.fire("go", {"fail": True})
        await manager.join()
        before = _snapshot(await storage.load_all(uid))
        attempts: list[tuple[type[Exception], Callable[[], Any]]] = [
            (InvalidInput, lambda: manager.fire(42, {})),  # type: ignore[arg-type]
            (InvalidInput, lambda: manager.fire("tick", {"when": object()})),
            (InvalidInput, lambda: manager.fire("tick", {"x": float("nan")})),
            (InvalidInput, lambda: manager.fire("tick", ["not", "a", "mapping"])),  # type: ignore[arg-type]
            (
                ConfigurationError,
                lambda: manager.update_configuration(
                    {
                        "ok": {"after": ["x"], "run": "conformance.echo"},
                        "bad": {"after": "x", "run": "r"},
                    }
                ),
            ),
            (InstanceNotFound, lambda: manager.replay_failed_instance("count#99")),
            (InvalidStatus, lambda: manager.replay_failed_instance("count#0")),
            (InvalidStatus, lambda: manager.skip_failed_instance("count#0")),
            (InvalidInput, lambda: manager.update_instance_status("fragile#0", "exploded")),
            (InvalidInput, lambda: manager.update_instance_metadata("fragile#0", {"x": {1, 2}})),
            (InvalidInput, lambda: manager.replay_failed_instance("fragile#0", {"go": 1})),  # type: ignore[dict-item]
        ]
        for error, attempt in attempts:
            with pytest.raises(error):
                await attempt()
            assert _snapshot(await storage.load_all(uid)) == before, error
        if storage_factory.shared:
            async with storage_factory() as other:
                assert _snapshot(await other.load_all(uid)) == before
        assert Counter(recorder.runs) == {"count#0": 1, "fragile#0": 1}

    # -- concurrency ---------------------------------------------------------------------------

    async def test_concurrent_fires_on_one_storage(self, storage: Storage, recorder: _Recorder) -> None:
        uid = _uid()
        manager = TriggerManager(storage, uid, tasks=recorder.registry)
        await manager.update_configuration(_TICKS)
        count = self.concurrent_fires
        fired = await asyncio.gather(
            *(
                TriggerManager(storage, uid, tasks=recorder.registry).fire("tick", {"n": n})
                for n in range(count)
            )
        )
        assert sum(len(f) for f in fired) == count
        await storage.drain(60)
        await self._check_ticks(storage, uid, count, recorder.runs)

    async def test_concurrent_fires_on_two_storage_objects(
        self, storage_factory: StorageFactory, recorder: _Recorder
    ) -> None:
        self._require_shared(storage_factory)
        uid = _uid()
        count = self.concurrent_fires
        async with storage_factory() as one, storage_factory() as two:
            await TriggerManager(one, uid, tasks=recorder.registry).update_configuration(_TICKS)

            async def fire(storage: Storage, n: int) -> int:
                return len(await TriggerManager(storage, uid, tasks=recorder.registry).fire("tick", {"n": n}))

            fired = await asyncio.gather(*(fire(one if n % 2 else two, n) for n in range(count)))
            assert sum(fired) == count
            await asyncio.gather(one.drain(60), two.drain(60))
            await self._check_ticks(one, uid, count, recorder.runs)

    @staticmethod
    async def _check_ticks(storage: Storage, uid: str, count: int, runs: Sequence[str]) -> None:
        state = await storage.load_all(uid)
        names = [f"count#{n}" for n in range(count)]
        assert sorted(state.instances) == sorted(names)
        assert state.instance_counts == {"count": count}
        unfinished = {
            n: i.status.value for n, i in state.instances.items() if i.status is not Status.FINISHED
        }
        assert not unfinished
        assert Counter(runs) == dict.fromkeys(names, 1)
        fired_with = sorted(i.kwargs["tick"]["n"] for i in state.instances.values())
        assert fired_with == list(range(count))

    async def test_fires_from_several_processes(
        self, storage_factory: StorageFactory, storage: Storage, tmp_path: Path
    ) -> None:
        if not storage_factory.cross_process:
            pytest.skip("this storage cannot be reached from another process")
        uid = _uid()
        manager = TriggerManager(storage, uid, tasks=_Recorder().registry)
        await manager.update_configuration(_CHILD_CONFIGURATION)
        side_effects = tmp_path / "runs.sqlite3"
        with sqlite3.connect(side_effects) as db:
            db.execute("CREATE TABLE runs (instance TEXT NOT NULL, pid INTEGER NOT NULL)")
        db.close()
        request = {
            "url": storage.url,
            "uid": uid,
            "runs": str(side_effects),
            "fires": self.fires_per_process,
            "concurrency": self.concurrency_per_process,
            "max_attempts": self.max_attempts,
            "imports": list(storage_factory.child_imports),
        }
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "atriggers.testing.conformance",
                json.dumps({**request, "process": k}),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONWARNINGS": "error"},
            )
            for k in range(self.processes)
        ]
        try:
            outputs = await asyncio.wait_for(asyncio.gather(*(child.communicate() for child in children)), 90)
        finally:
            for child in children:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
        for child, (out, err) in zip(children, outputs, strict=True):
            assert child.returncode == 0, err.decode()
            assert b"Traceback" not in err, err.decode()
            assert json.loads(out)["acknowledged"] == self.fires_per_process
        total = self.processes * self.fires_per_process
        storage.forget(uid)
        state = await storage.load_all(uid)
        expected = sorted(f"{task}#{n}" for task in ("record", "follow") for n in range(total))
        unfinished = {
            n: i.status.value for n, i in state.instances.items() if i.status is not Status.FINISHED
        }
        assert sorted(state.instances) == expected, (unfinished, outputs)
        unfinished = {
            n: i.status.value for n, i in state.instances.items() if i.status is not Status.FINISHED
        }
        assert not unfinished
        with sqlite3.connect(side_effects) as db:
            rows = db.execute("SELECT instance, pid FROM runs").fetchall()
        db.close()
        assert Counter(name for name, _ in rows) == dict.fromkeys(expected, 1)
        assert len({pid for _, pid in rows}) == self.processes  # each process ran its share
        fired = sorted(
            (i.kwargs["tick"]["process"], i.kwargs["tick"]["n"])
            for n, i in state.instances.items()
            if n.startswith("record#")
        )
        assert fired == [(k, n) for k in range(self.processes) for n in range(self.fires_per_process)]


# -- the child process of the cross-process test ------------------------------------------------

_CHILD_CONFIGURATION: Mapping[str, Mapping[str, Any]] = {
    "record": {"after": ["tick"], "andEvery": "tick", "run": "conformance.child.record"},
    "follow": {"after": ["record"], "andEvery": "record", "run": "conformance.child.record"},
}


async def _child(request: Mapping[str, Any]) -> dict[str, Any]:
    import importlib

    from ...storage.registry import open_storage

    for module in request["imports"]:
        importlib.import_module(module)
    runs_db = sqlite3.connect(request["runs"], timeout=60, check_same_thread=False)
    lock = asyncio.Lock()

    async def record(context: TaskContext) -> dict[str, Any]:
        async with lock:  # one sqlite3 connection, used from the loop only
            with runs_db:
                runs_db.execute(
                    "INSERT INTO runs (instance, pid) VALUES (?, ?)",
                    (context.instance_name, os.getpid()),
                )
        return {"instance": context.instance_name}

    registry = TaskRegistry(entry_point_group=None)
    registry.register(record, "conformance.child.record")
    acknowledged = retried = 0

    class Manager(TriggerManager):
        max_attempts = request["max_attempts"]

    async with open_storage(request["url"]) as storage:
        manager = Manager(storage, request["uid"], tasks=registry)

        async def fire(n: int) -> None:
            nonlocal acknowledged, retried
            for _ in range(20):
                try:
                    await manager.fire("tick", {"process": request["process"], "n": n})
                except ConcurrencyError:
                    retried += 1  # nothing was written: firing again is safe
                    continue
                acknowledged += 1
                return

        # Fires overlap within the process too, as requests of a web server do.
        limit = asyncio.Semaphore(request["concurrency"])

        async def limited(n: int) -> None:
            async with limit:
                await fire(n)

        await asyncio.gather(*(limited(n) for n in range(request["fires"])))
        await manager.join()
    runs_db.close()
    return {"acknowledged": acknowledged, "retried": retried}


def _child_main(argument: str) -> None:
    """Entry point of the cross-process test's child (``python -m
    atriggers.testing.conformance REQUEST``)."""
    print(json.dumps(asyncio.run(_child(json.loads(argument)))))
