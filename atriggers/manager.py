"""`TriggerManager`: one session's operations, orchestrated.

Every operation is: per-session lock -> read snapshot -> apply a pure rule
(`atriggers._rules`) to a draft -> compare-and-swap write -> dispatch what the rule
scheduled -> subclass hook. On a version conflict the rule is re-applied to the
fresh state, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import sys
import uuid
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from . import _rules as rules
from . import _telemetry as telemetry
from . import idempotency
from ._json import check_name, check_text, copy_json, dumps, kwargs_by_trigger, loads, object_arg
from .clock import from_iso, sleep_until
from .config import parse_configuration
from .context import Retry, Skip, TaskContext, exception_metadata
from .due import DELAY_PREFIX, Due, DueEntry, is_delay_key
from .errors import (
    ConcurrencyError,
    InstanceLost,
    InstanceNotFound,
    InvalidInput,
    InvalidStatus,
    MaxRetriesExceeded,
    StorageError,
    TriggerError,
    UnknownManager,
    UnknownRunner,
    UnknownTask,
    with_context,
)
from .explain import Explanation, explain
from .instance import Meta, Status, TaskInstance, check_metadata
from .preview import FirePreview, preview_fire
from .registry import Registry
from .repair import check_actions
from .repair import repair as repair_rule
from .runners import AsyncioRunner, RunnerRegistry
from .runners import runners as default_runners
from .runners.inprocess import _Slots
from .state import Change, Draft, Placement, SessionState
from .storage.base import Storage, VersionConflict
from .storage.runs import RunTracker
from .tasks import TaskDefinition, TaskRegistry
from .tasks import registry as default_tasks

__all__ = ["ENTRY_POINT_GROUP", "TriggerManager", "get_manager_class", "managers", "register_manager"]

log = logging.getLogger("atriggers")

T = TypeVar("T")
InstanceRef = str | TaskInstance

#: Entry-point group for manager subclasses (``name = "pkg.mod:Class"``), so
#: remote workers rebuild the right manager for a session.
ENTRY_POINT_GROUP = "atriggers.managers"


def _name_of(instance: InstanceRef) -> str:
    if isinstance(instance, TaskInstance):
        return instance.name
    if not isinstance(instance, str):
        raise InvalidInput(f"instance must be a name or a TaskInstance, not {instance!r}")
    check_text(instance, "instance name")
    return instance


def _trigger_name(trigger: object) -> str:
    if not isinstance(trigger, str) or not trigger.strip():
        raise InvalidInput(f"trigger names must be non-empty strings, not {trigger!r}")
    check_text(trigger, "trigger name")
    return trigger


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be True or False, not {value!r}")
    return value


class TriggerManager:
    """Fires triggers into one session (`uid`) of a `storage`, and runs what they
    make ready. Cheap to create: make one per request or per task."""

    #: Name under which remote workers find this class (`register_manager`).
    manager_name: ClassVar[str] = "default"
    #: Runner for tasks without ``using`` (a subclass or the constructor may
    #: change it).
    default_runner: str = "asyncio"
    #: Attempts of an operation before `ConcurrencyError`. Retries back off with
    #: full jitter up to 50 ms, so the budget spans about a second of contention.
    max_attempts: int = 48
    #: A lost instance of an ``onLost: retry`` task is replayed after a random
    #: wait of up to ``lost_backoff * 2**retries`` seconds, at most
    #: `lost_backoff_cap` (full jitter).
    lost_backoff: float = 1.0
    lost_backoff_cap: float = 60.0
    #: Seconds a claimed due entry stays with its claimer before another may
    #: take it (should the claimer die while acting on it).
    claim_for: float = 30.0
    #: `join` waits for this manager's timers coming due this soon (seconds).
    join_timers_within: float = 60.0
    #: Seconds a fire's idempotency key is remembered, and how many keys a session
    #: remembers at most (a new one then replaces the oldest): see `fire`.
    key_retention: float = idempotency.DEFAULT_KEY_RETENTION
    max_keys: int = idempotency.DEFAULT_MAX_KEYS

    def __init__(
        self,
        storage: Storage,
        uid: str,
        *,
        default_runner: str | None = None,
        tasks: TaskRegistry | None = None,
        runners: RunnerRegistry | None = None,
    ) -> None:
        if not isinstance(storage, Storage):
            raise TypeError(f"storage must be an atriggers Storage, not {storage!r}")
        check_name(uid, "uid")
        self.storage = storage
        self.uid = uid
        if default_runner is not None:
            self.default_runner = default_runner
        self.tasks = tasks if tasks is not None else default_tasks
        self.runners = runners if runners is not None else default_runners
        self._inflight: set[asyncio.Task[Any]] = set()
        #: What the callers of `join` wait on: woken when an in-flight task ends
        #: (then each looks again at what is still going).
        self._joiners: list[asyncio.Future[None]] = []
        #: This manager's timers (cooldowns, delayed fires) -> when they are due.
        self._timers: dict[asyncio.Task[Any], float] = {}
        self._placer = _Placer(self.runners, storage, self.tasks)
        self._placement = self._placer.placement(self.default_runner)
        #: Runs a write of this manager started as it placed them (see
        #: `_Placer.start`), by instance name, until the runner takes them.
        self._started: dict[str, _PlacedRun] = {}
        #: Run token -> the ERROR-level log lines its task emitted so far.
        self._error_logs: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.uid!r} on {self.storage!r}>"

    # -- configuration and triggers ----------------------------------------------

    async def update_configuration(self, configuration: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge tasks into the session's configuration (same name replaces).

        Raises `ConfigurationError` naming every bad task and directive; then
        nothing is stored.
        """
        tasks = parse_configuration(configuration)
        await self._apply(lambda d: rules.configure(d, tasks))

    async def fire(
        self,
        trigger: str,
        kwargs: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        delay: float | None = None,
    ) -> list[TaskInstance]:
        """Fire a trigger; returns the instances it scheduled (already dispatched).

        A failed dispatch does not raise: the instance is stored as failed. With
        `delay` (seconds), the fire is stored now and applied that much later,
        durably (by this process if it still runs then, else by any sweeper);
        it returns ``[]``.

        With `key` (an idempotency key: a non-blank string of at most 255
        characters), the fire happens once in the session: fired again with the
        same key, trigger and kwargs it changes nothing and returns the instances
        the first fire scheduled, as they are now; with another trigger or other
        kwargs it raises `IdempotencyConflict` and writes nothing. A session
        remembers a key `key_retention` seconds (24 h), and at most `max_keys`
        (10,000) keys.
        """
        trigger = _trigger_name(trigger)
        kwargs = object_arg(kwargs, f"kwargs of trigger {trigger!r}")
        once = None if key is None else idempotency.signature(key, trigger, kwargs)
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay):
                raise InvalidInput(f"delay must be a number of seconds, not {delay!r}")
            if delay < 0:
                raise InvalidInput(f"delay must be >= 0 seconds, not {delay!r}")
            if delay > 0:
                return await self._shielded(
                    telemetry.fire(self.uid, trigger, self._fire_later(trigger, kwargs, float(delay), once))
                )
        return await self._shielded(telemetry.fire(self.uid, trigger, self._fire(trigger, kwargs, once)))

    async def _fire_later(
        self, trigger: str, kwargs: dict[str, Any], delay: float, once: idempotency.Signature | None
    ) -> list[TaskInstance]:
        key = f"{DELAY_PREFIX}{uuid.uuid4().hex}"
        at = self.storage.clock.time() + delay
        fired: dict[str, Any] = {"trigger": trigger, "kwargs": kwargs}
        if (traceparent := telemetry.current_traceparent()) is not None:
            fired["traceparent"] = traceparent  # the fire's span, for the runs it feeds
        payload = dumps(fired)

        def later(draft: Draft) -> list[TaskInstance]:
            draft.set_due(key, Due(at, None, payload))
            return []

        # A keyed delayed fire stores its key with the due entry, in one write: a
        # retry finds the key and stores nothing, before or after the fire applies.
        if once is None:
            await self._apply(later)
        elif (await self._apply(self._once(once, later))).repeated:
            return []
        self._wake_at(key, at)
        return []

    async def _fire(
        self, trigger: str, kwargs: dict[str, Any], once: idempotency.Signature | None = None
    ) -> list[TaskInstance]:
        if once is None:
            ready = self._handed_out(await self._apply(lambda d: rules.fire(d, trigger, kwargs)))
        else:
            fired = await self._apply(self._once(once, lambda d: rules.fire(d, trigger, kwargs)))
            if fired.repeated:
                # Nothing changed: what the first fire scheduled, as it is now.
                state = await self.storage.load(self.uid, fired.names)
                return [state.instances[n] for n in fired.names if n in state.instances]
            ready = self._handed_out(fired.instances)
        await self._dispatch(ready)
        await self.post_fire(trigger, ready)
        return ready

    def _once(
        self, once: idempotency.Signature, fire: Callable[[Draft], list[TaskInstance]]
    ) -> Callable[[Draft], idempotency.Fired]:
        """The rule of a keyed fire (`atriggers.idempotency.fire_once`)."""
        retention, max_keys = self.key_retention, self.max_keys
        if type(max_keys) is not int or max_keys < 1 or not retention > 0:
            raise InvalidInput(
                f"max_keys must be an int >= 1 and key_retention seconds > 0, "
                f"not {max_keys!r} and {retention!r}"
            )
        ms = int(retention * 1000)
        return lambda d: idempotency.fire_once(d, once, fire, ms, max_keys)

    # -- repairs ----------------------------------------------------------------------

    async def replay_failed_instance(
        self,
        instance: InstanceRef,
        replacement_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> TaskInstance:
        """Mark a failed instance ``replayed`` and run a clone of it (metadata
        ``parent`` names the failed one), with `replacement_kwargs` (trigger ->
        kwargs, replacing all of them) if given. Returns the clone."""
        name = _name_of(instance)
        replacement = kwargs_by_trigger(replacement_kwargs, "replacement_kwargs")
        return await self._shielded(
            telemetry.operation("replay", self.uid, name, self._replay(name, replacement))
        )

    async def _replay(self, name: str, replacement: dict[str, Any] | None) -> TaskInstance:
        [clone] = self._handed_out([await self._apply(lambda d: rules.replay(d, name, replacement), [name])])
        await self._dispatch([clone])
        await self.post_replay(clone)
        return clone

    async def skip_failed_instance(
        self,
        instance: InstanceRef,
        cascade: bool = False,
        result: Mapping[str, Any] | None = None,
    ) -> TaskInstance:
        """Mark a failed instance ``skipped``; with `cascade`, its task's name
        fires with `result` as if it had finished."""
        name = _name_of(instance)
        cascade = _flag(cascade, "cascade")
        result_kwargs = object_arg(result, "result")
        return await self._shielded(
            telemetry.operation("skip", self.uid, name, self._skip(name, cascade, result_kwargs))
        )

    async def _skip(self, name: str, cascade: bool, result: dict[str, Any]) -> TaskInstance:
        skipped, ready = await self._apply(lambda d: rules.skip(d, name, cascade, result), [name])
        skipped, ready = skipped.snapshot(), self._handed_out(ready)
        if cascade:
            await self._dispatch(ready)
            await self.post_fire(skipped.task_name, ready)
        await self.post_skip(skipped, cascade)
        return skipped

    async def update_instance_status(
        self,
        instance: InstanceRef,
        status: Status | str,
        metadata: Mapping[str, Any] | None = None,
        cascade: bool = False,
        cascade_kwargs: Mapping[str, Any] | None = None,
    ) -> TaskInstance:
        """Set an instance's status (and merge `metadata`); with `cascade`, fire
        its task's name with `cascade_kwargs`. An operator's tool: no checks on
        which status may follow which."""
        name = _name_of(instance)
        try:
            new_status = Status(status)
        except ValueError:
            known = ", ".join(s.value for s in Status)
            raise InvalidInput(f"unknown status {status!r} (one of: {known})") from None
        meta = object_arg(metadata, "metadata")
        check_metadata(meta)
        cascade = _flag(cascade, "cascade")
        kwargs = object_arg(cascade_kwargs, "cascade_kwargs")
        return await self._shielded(self._set_status(name, new_status, meta, cascade, kwargs))

    async def _set_status(
        self, name: str, status: Status, meta: dict[str, Any], cascade: bool, kwargs: dict[str, Any]
    ) -> TaskInstance:
        updated, ready = await self._apply(
            lambda d: rules.set_status(d, name, status, meta, cascade, kwargs), [name]
        )
        [updated], ready = self._handed_out([updated]), self._handed_out(ready)
        if status is Status.SCHEDULED:
            # Scheduled means handed to a runner: an operator re-queuing an
            # instance this way gets it run, not parked.
            await self._dispatch([updated])
        if cascade:
            await self._dispatch(ready)
            await self.post_fire(updated.task_name, ready)
        return updated

    async def update_instance_metadata(
        self, instance: InstanceRef, metadata: Mapping[str, Any]
    ) -> TaskInstance:
        """Merge `metadata` into the instance's metadata (status unchanged)."""
        name = _name_of(instance)
        meta = object_arg(metadata, "metadata")
        check_metadata(meta)
        return (await self._apply(lambda d: rules.update_metadata(d, name, meta), [name])).snapshot()

    async def mark_instance_logs_resolved(self, instance: InstanceRef) -> TaskInstance:
        """Mark the instance's ERROR-level logs as dealt with."""
        name = _name_of(instance)
        instance = await self._apply(
            lambda d: rules.update_metadata(d, name, {Meta.LOGS_RESOLVED: True}), [name]
        )
        return instance.snapshot()

    async def apply_repairs(
        self,
        actions: Mapping[str, str],
        *,
        expected_version: int | None = None,
        record: Mapping[str, Any] | None = None,
        runner: str | None = None,
    ) -> tuple[list[TaskInstance], list[TaskInstance]]:
        """Replay or skip several failed instances (instance -> ``"replay"`` or
        ``"skip"``) in one atomic write, recording `record` (who, why) under
        ``repair`` in each one's metadata; returns (the clones, the skipped).

        With `expected_version`, refuses with `SessionChanged` if the session is
        no longer at that version; `InvalidStatus` if one is not failed. Either
        way nothing is written. Replays go to `runner` if given (a task's
        ``using`` still wins), else where the failed instance went.
        """
        checked = check_actions(object_arg(actions, "actions"))
        meta = object_arg(record, "record")
        if runner is not None:
            self.runners.get(runner)  # UnknownRunner before anything is written
        return await self._shielded(self._repair(checked, expected_version, meta, runner))

    async def _repair(
        self, actions: Mapping[str, Any], version: int | None, record: dict[str, Any], runner: str | None
    ) -> tuple[list[TaskInstance], list[TaskInstance]]:
        clones, skipped = await self._apply(
            lambda d: repair_rule(d, actions, version, record, runner), list(actions)
        )
        clones, skipped = self._handed_out(clones), [i.snapshot() for i in skipped]
        await self._dispatch(clones)
        for clone in clones:
            await self.post_replay(clone)
        for instance in skipped:
            await self.post_skip(instance, False)
        return clones, skipped

    async def annotate_instance(
        self, instance: InstanceRef, text: str, *, by: str | None = None
    ) -> TaskInstance:
        """Add an operator's note (`text`, and who wrote it) to the instance's
        ``notes`` metadata, with the time; its status is unchanged."""
        name = _name_of(instance)
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(f"a note must be a non-empty string, not {text!r}")
        check_text(text, "note")
        if by is not None:
            if not isinstance(by, str):
                raise InvalidInput(f"by (who wrote the note) must be a string, not {by!r}")
            check_text(by, "by")
        note = {"by": by, "text": text} if by else {"text": text}
        return (await self._apply(lambda d: rules.annotate(d, name, note), [name])).snapshot()

    # -- reading ------------------------------------------------------------------------

    async def explain(self, name: str | None = None) -> list[Explanation]:
        """Why the session's tasks ran or did not: one `Explanation` per task
        (its most pressing instance, or why it has none), or for every instance of task
        `name`, or for instance `name` (`InstanceNotFound` if neither)."""
        if name is not None:
            check_text(name, "name")
        state = await self.get_state()
        return explain(state, name, now=self.storage.clock.time())

    async def preview_fire(self, trigger: str, kwargs: Mapping[str, Any] | None = None) -> FirePreview:
        """What `fire` would create, schedule and abandon now; writes nothing
        and dispatches nothing (the cascades of what it would run are not told)."""
        trigger = _trigger_name(trigger)
        kwargs = object_arg(kwargs, f"kwargs of trigger {trigger!r}")
        state = await self.storage.load(self.uid)
        return preview_fire(
            state, trigger, kwargs, at=self.storage.clock.time(), default_runner=self.default_runner
        )

    async def get_state(self) -> SessionState:
        """A snapshot of the whole session, every instance included."""
        return await self.storage.load_all(self.uid)

    async def get_instance(self, name: str) -> TaskInstance:
        """One instance, read from storage (`InstanceNotFound` if none)."""
        state = await self.storage.load(self.uid, [name])
        try:
            return state.instances[name]
        except KeyError:
            raise InstanceNotFound(name, self.uid) from None

    async def join(self, *, timers: bool = True) -> None:
        """Wait until every in-process run started through this manager, and the
        runs their cascades and retries started, has finished.

        With `timers`, its cooldowns and delayed fires are waited for too when
        they come due: up to `join_timers_within` seconds ahead on a clock that
        flows by itself, only those already due on a test's `FakeClock`.
        """
        # Not the task calling join (a hook awaiting it would wait for itself).
        current = asyncio.current_task()
        if not (timers and self._timers):
            while any(not t.done() and t is not current for t in self._inflight):
                # (Not `asyncio.wait`: its waiter hears of a task's end through the
                # task's done callbacks, a turn of the loop later than a run's
                # own last step wakes this one; see `_ran`.)
                joiner = asyncio.get_running_loop().create_future()
                self._joiners.append(joiner)
                await joiner
            if not (timers and self._timers):
                return
        clock = self.storage.clock
        while True:
            horizon = clock.time() + (self.join_timers_within if getattr(clock, "flows", True) else 0.0)
            waiting = {t for t in self._inflight if not t.done()} - {current}
            if timers:
                waiting |= {task for task, at in self._timers.items() if at <= horizon}
            if not waiting:
                return
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)

    # -- hooks for subclasses --------------------------------------------------------

    async def post_fire(self, trigger_name: str, tasks_scheduled: list[TaskInstance]) -> None:
        """Called after a fire (cascades included) is stored and dispatched."""

    async def post_replay(self, task_instance: TaskInstance) -> None:
        """Called after a replay is stored and dispatched, with the new instance."""

    async def post_skip(self, task_instance: TaskInstance, cascade: bool) -> None:
        """Called after a skip is stored (and after its cascade, if any)."""

    # -- running instances: the one code path of every runner ---------------------

    def track(self, task: asyncio.Task[Any]) -> None:
        """Adopt an in-process run: `join` and closing the storage wait for it."""
        self._inflight.add(task)
        task.add_done_callback(self._untrack)
        self.storage.track(task)

    def _untrack(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        self._ran()

    def _ran(self) -> None:
        """Wake the callers of `join` (an in-flight task ended, or is ending:
        they look again)."""
        if not self._joiners:
            return
        joiners, self._joiners = self._joiners, []
        for joiner in joiners:
            if not joiner.done():
                joiner.set_result(None)

    async def run_instance(
        self, instance: InstanceRef, *, deadline: float | None = None, owned: bool = True
    ) -> TaskInstance | None:
        """Run a scheduled instance here and now, store the outcome, cascade.

        Runners call this (in-process, or in a worker after rebuilding the
        manager). Returns the instance in its final state, or None when it was not
        ``scheduled`` (already taken by another worker, or changed by an operator),
        or when it was lost while running: an instance runs at most once.

        The run is held by this process's lease owner (`owned`), or, for a
        process that cannot renew a lease (a Lambda invocation), bounded by
        `deadline` (epoch seconds) alone. It carries a fencing token: only this
        run can store its outcome, and only while it is not lost.
        """
        name = _name_of(instance)
        placed = self._take_placed(name)
        if placed is not None:
            # Started already, by the write that placed it (a runner of its own
            # that calls this): run it, in the slot that write took.
            try:
                return await self._run_placed(placed)
            finally:
                placed.release()
        token = os.urandom(16).hex()
        owner = (self.storage.lease.current() or await self.storage.lease.acquire()) if owned else None
        running = await self._apply(
            lambda d: rules.start(d, name, token, owner, deadline, self._max_retries_of(d, name)), [name]
        )
        if running is None:
            log.info(
                "%s/%s is not scheduled any more; not running it",
                self.uid,
                name,
                extra={"uid": self.uid, "instance": name},
            )
            return None
        return await telemetry.run(self.uid, running, self._run_started(running, token, owner))

    def _take_placed(self, name: str) -> _PlacedRun | None:
        """The run of instance `name` that this manager's write started as it
        placed it on the asyncio runner (None: it was only scheduled). For that
        runner: it is handed out once."""
        return self._started.pop(name, None)

    async def _run_placed(self, started: _PlacedRun) -> TaskInstance | None:
        """Run an instance stored ``running`` by the write that placed it (see
        `_take_placed`): as `run_instance`, without a write to start it."""
        running = started.running
        return await telemetry.run(
            self.uid, running, self._run_started(running, started.token, running.owner)
        )

    def _handed_out(self, instances: Collection[TaskInstance]) -> list[TaskInstance]:
        """Snapshots of what an operation scheduled, for callers, hooks and
        runners: an instance its write also started is shown as it was
        scheduled (what `fire` returns), its run waits in `_started`."""
        started = self._started
        return [
            s.scheduled if (s := started.get(i.name)) is not None and s.running is i else i.snapshot()
            for i in instances
        ]

    def _keep_started(self, taken: list[_PlacedRun], written: Change | None) -> None:
        """After a write (`written`: what it stored; None: nothing), keep the
        runs it started as it placed them, give back the slots of the others
        (attempts that lost a conflict, or whose write failed)."""
        stored = {i.name: i for i in written.instances} if written is not None else {}
        for run in taken:
            # (By token too: an instance scheduled twice in one draft was started twice.)
            instance = stored.get(run.running.name)
            if instance is run.running and instance.metadata.get(Meta.TOKEN) == run.token:
                trace = instance.metadata.get(Meta.TRACE)
                if trace is not None:  # (stamped after the rule: see `telemetry.prepare`)
                    run.scheduled.metadata[Meta.TRACE] = copy_json(trace)
                self._started[run.running.name] = run
            else:
                run.release()
        taken.clear()

    async def _run_started(self, running: TaskInstance, token: str, owner: str | None) -> TaskInstance | None:
        name = running.name
        try:
            definition = self.tasks.get(running.config.run if running.config else running.task_name)
        except UnknownTask as exc:
            return await self._shielded(self._fail(name, exc, token=token))
        context = TaskContext(self, running.snapshot(), definition, token=token)
        # The text of what the task logs at ERROR and above goes with its outcome.
        self._error_logs[token] = context.error_logs
        outcome: object
        try:
            try:
                outcome = await self._run_body(definition, context)
            except asyncio.CancelledError as exc:
                await self._shielded(self._fail(name, exc, context.log_level, token=token))
                raise
            except Exception as exc:  # noqa: BLE001 - a task's failure is data
                outcome = exc
            if outcome is _LOST:
                return None
            # Storing the outcome and dispatching its cascade is one shielded step: a
            # cancellation (shutdown, time limit) cannot leave a stored cascade undispatched.
            return await self._store_outcome(
                name, token, outcome, context.log_level, definition.name, owner, context.deadline
            )
        finally:
            self._error_logs.pop(token, None)
            # The run's last step: `join` hears of it now, not a loop turn after
            # the task ends (a runner's task ends with it, in this step).
            self._ran()

    def _logs_of(self, token: str | None) -> dict[str, Any]:
        """The ``errorLogs`` metadata of run `token` (empty if it logged none)."""
        logs = self._error_logs.get(token) if token is not None else None
        return {Meta.ERROR_LOGS: list(logs)} if logs else {}

    async def _store_outcome(
        self,
        name: str,
        token: str,
        outcome: object,
        log_level: int,
        task: str,
        owner: str | None,
        deadline: float | None,
    ) -> TaskInstance | None:
        """Store the run's outcome and dispatch its cascade. While storage is down
        (or writers keep colliding) and the run is still this process's (its
        lease holds it, or its deadline is ahead), nobody else will recover it:
        keep trying (the token refuses the write if the run is lost meanwhile).
        Otherwise give up: a sweeper recovers it."""
        delay = 0.05
        while True:
            try:
                return await self._shielded(self._conclude(name, outcome, log_level, task, token))
            except (StorageError, ConcurrencyError) as exc:
                held = owner is not None and self.storage.lease.owner == owner
                if not (held or (deadline is not None and self.storage.clock.time() < deadline)):
                    raise
                log.warning(
                    "%s/%s: storing the outcome of run %s failed (%s); retrying in %.2gs",
                    self.uid,
                    name,
                    token,
                    exc,
                    delay,
                    extra={"uid": self.uid, "instance": name},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            try:
                stored = await self.get_instance(name)
            except (StorageError, ConcurrencyError):
                continue
            if stored.status is not Status.RUNNING and stored.metadata.get(Meta.TOKEN) == token:
                return stored  # the write had landed, only its answer was lost

    async def _run_body(self, definition: TaskDefinition, context: TaskContext) -> object:
        """Run the task body; past its deadline (heartbeats move it) cancel it and
        record the instance lost here and now, without waiting for a sweeper."""
        if context.deadline is None:
            return await definition(context)
        clock = self.storage.clock
        body = asyncio.ensure_future(definition(context))
        self.storage.track(body)
        try:
            while True:
                remaining = context.deadline - clock.time()
                if remaining <= 0:
                    break
                timer = asyncio.ensure_future(clock.sleep(remaining))
                try:
                    await asyncio.wait({body, timer}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    timer.cancel()
                if body.done():
                    return body.result()
        except asyncio.CancelledError:
            body.cancel()
            raise
        body.cancel()
        await self._shielded(self._lose(context.instance_name, context.token))
        # A body that cannot be cancelled (a sync task in its thread) may still
        # end: what it hands back is refused, and said so.
        body.add_done_callback(lambda done: self._refused_late(context, done))
        return _LOST

    def _refused_late(self, context: TaskContext, body: asyncio.Future[object]) -> None:
        if not body.cancelled():
            body.exception()  # retrieved: the outcome of a lost run is discarded either way
            self._refused(context.instance_name, None, context.token)

    async def heartbeat(self, instance: InstanceRef, token: str | None = None) -> float | None:
        """Extend a running instance's deadline by its ``timeout`` from now (tasks
        call ``context.heartbeat()``). Returns the new deadline (None: the task has
        no timeout). Raises `InstanceLost` when the run `token` was lost."""
        name = _name_of(instance)
        beat = await self._apply(lambda d: rules.heartbeat(d, name, token), [name])
        if beat is None:
            raise InstanceLost(f"{self.uid}/{name} was lost: its outcome will not be stored")
        deadline = beat.metadata.get(Meta.DEADLINE)
        return from_iso(deadline) if isinstance(deadline, str) else None

    async def _conclude(
        self, name: str, outcome: object, log_level: int, task: str, token: str | None = None
    ) -> TaskInstance | None:
        if isinstance(outcome, BaseException) and not isinstance(outcome, (Retry, Skip)):
            return self._refused(name, await self._fail(name, outcome, log_level, token=token), token)
        # Check what the task handed back before anything is written: what cannot
        # be stored fails the instance with the reason.
        try:
            if isinstance(outcome, Retry):
                meta = {
                    **object_arg(outcome.metadata, "retry metadata"),
                    Meta.LOG_LEVEL: log_level,
                    **self._logs_of(token),
                }
                check_metadata(meta, "retry metadata")
                replacement = kwargs_by_trigger(outcome.replacement_kwargs, "replacement_kwargs")
            elif isinstance(outcome, Skip):
                meta = {
                    **object_arg(outcome.metadata, "skip metadata"),
                    Meta.LOG_LEVEL: log_level,
                    **self._logs_of(token),
                }
                check_metadata(meta, "skip metadata")
            else:
                result = _check_result(outcome, task)
        except (InvalidInput, TypeError) as exc:
            return self._refused(name, await self._fail(name, exc, log_level, token=token), token)
        if isinstance(outcome, Retry):
            return self._refused(name, await self._retry(name, meta, replacement, token), token)
        if isinstance(outcome, Skip):
            skipped = await self._apply(lambda d: rules.skip_running(d, name, meta, token), [name])
            return self._refused(name, skipped.snapshot() if skipped else None, token)
        logs = self._logs_of(token)
        finished, ready = await telemetry.fire(
            self.uid,
            name.rpartition("#")[0],
            self._apply(lambda d: rules.finish(d, name, result, log_level, token, logs), [name]),
        )
        if finished is None:
            return self._refused(name, None, token)
        ready = self._handed_out(ready)
        await self._dispatch(ready)
        await self.post_fire(finished.task_name, ready)
        return finished.snapshot()

    def _refused(self, name: str, stored: TaskInstance | None, token: str | None) -> TaskInstance | None:
        if stored is None and token is not None:
            # A zombie: lost (or resolved by an operator) while it ran.
            log.warning(
                "%s/%s: the outcome of run %s was refused: the instance is no longer that run "
                "(lost, or resolved by an operator); nothing was stored and nothing cascades",
                self.uid,
                name,
                token,
                extra={"uid": self.uid, "instance": name},
            )
        return stored

    async def _retry(
        self, name: str, meta: dict[str, Any], replacement: dict[str, Any] | None, token: str | None = None
    ) -> TaskInstance | None:
        clone = await self._apply(lambda d: rules.retry(d, name, meta, replacement, token), [name])
        if clone is None:
            return None
        [clone] = self._handed_out([clone])
        await self._dispatch([clone])
        await self.post_replay(clone)
        return clone

    def _max_retries_of(self, draft: Draft, name: str) -> int:
        """The ``max_retries`` of the task instance `name` runs (0 if not known here)."""
        instance = draft.find(name)
        return 0 if instance is None else _max_retries(self.tasks, instance)

    # -- time and ownership: the due index --------------------------------------------------

    async def handle_due(self, entry: DueEntry) -> str:
        """Act on a claimed due-index entry of this session (the `Sweeper` and
        this process's own timers call it): a delayed fire is applied, an expired
        window abandons its instance, a cooldown that ended dispatches its clone,
        a lost instance gets its task's ``onLost`` policy. Returns what it was
        (``"delay"``, ``"expired"``, ``"released"``, ``"lost"``, ``"not-due"``,
        ``"stale"``)."""
        if is_delay_key(entry.key):
            return await self._shielded(self._fire_due(entry))
        return await self._shielded(telemetry.recovery(self.uid, entry.key, self._recover(entry)))

    async def _fire_due(self, entry: DueEntry) -> str:
        try:
            fired = loads(entry.payload or "")
            trigger, kwargs = str(fired["trigger"]), dict(fired["kwargs"])
        except (ValueError, KeyError, TypeError) as exc:
            log.error(
                "%s: dropping delayed fire %s with a malformed payload: %r",
                self.uid,
                entry.key,
                exc,
                extra={"uid": self.uid, "instance": None},
            )
            await self._apply(lambda d: d.set_due(entry.key, None))
            return "stale"

        def rule(draft: Draft) -> list[TaskInstance]:
            draft.set_due(entry.key, None)
            return rules.fire(draft, trigger, kwargs)

        with telemetry.remote_parent(fired.get("traceparent")):
            ready = self._handed_out(await self._apply(rule))
            await self._dispatch(ready)
        await self.post_fire(trigger, ready)
        return "delay"

    async def _recover(self, entry: DueEntry) -> str:
        name = entry.key
        outcome: dict[str, Any] = {}
        backoff = random.uniform(0, 1)  # scaled by the lost instance's depth below

        def rule(draft: Draft) -> None:
            instance = draft.find(name)
            verdict = rules.classify(instance, entry.owner, entry.lapsed, draft.at)
            outcome.clear()
            outcome["verdict"] = verdict
            if verdict == "expired":
                rules.expire(draft, name)
            elif verdict == "released":
                outcome["dispatch"] = rules.release(draft, name)
            elif verdict == "lost":
                assert instance is not None
                lost, exceeded = _lost_metadata(self.uid, instance, entry)
                delay = backoff * min(self.lost_backoff_cap, self.lost_backoff * 2**instance.depth)
                changed = rules.lose(draft, name, lost, exceeded, self._max_retries_of(draft, name), delay)
                outcome["clone"] = changed[1] if changed is not None else None
            elif verdict == "not-due":
                draft.refresh_due(name)
            else:
                draft.set_due(name, None)

        await self._apply(rule, [name])
        if outcome.get("dispatch") is not None:
            await self._dispatch(self._handed_out([outcome["dispatch"]]))
        if outcome.get("clone") is not None:
            [clone] = self._handed_out([outcome["clone"]])
            await self._dispatch([clone])
            await self.post_replay(clone)
        if outcome["verdict"] == "lost":
            log.warning(
                "%s/%s was lost (%s); its task's onLost policy was applied",
                self.uid,
                name,
                "its owner stopped" if entry.lapsed else "past its deadline",
                extra={"uid": self.uid, "instance": name},
            )
        return str(outcome["verdict"])

    async def _lose(self, name: str, token: str | None) -> None:
        """This process saw its own run `token` of `name` overrun its deadline."""
        instance = await self.get_instance(name)
        if instance.status is not Status.RUNNING or instance.metadata.get(Meta.TOKEN) != token:
            return
        entry = DueEntry(self.uid, name, None, instance.owner, None, lapsed=False)
        await telemetry.recovery(self.uid, name, self._recover(entry))

    def _reconcile_later(self, change: Change, started: list[_PlacedRun]) -> None:
        owner = self.storage.lease.owner
        # Name -> the token of the run the write started (None: only scheduled it).
        held: dict[str, str | None] = {
            i.name: None for i in change.instances if i.status is Status.SCHEDULED and i.owner == owner
        }
        held.update((run.running.name, run.token) for run in started)
        if owner is not None and held:
            task = asyncio.get_running_loop().create_task(self._reconcile(owner, held))
            self.storage.track(task)

    async def _reconcile(self, owner: str, held: dict[str, str | None]) -> None:
        """After a write whose answer was lost: once storage answers again, dispatch
        the instances that write placed (or started) here if it did land. Gives up
        when this process's lease lapses: a sweeper then recovers them anyway."""
        delay = 0.2
        while self.storage.lease.current() == owner:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                state = await self.storage.load(self.uid, list(held))
            except TriggerError:
                continue
            landed: list[TaskInstance] = []
            for name, token in held.items():
                i = state.instances.get(name)
                if i is None or i.owner != owner:
                    continue
                if token is None and i.status is Status.SCHEDULED and Meta.NOT_BEFORE not in i.metadata:
                    landed.append(i.snapshot())
                elif token is not None and i.status is Status.RUNNING and i.metadata.get(Meta.TOKEN) == token:
                    # Started by that write: its run is ours to do (in the next free slot).
                    started = self._started[name] = _PlacedRun(i, token, i.snapshot(), None)
                    landed.append(started.scheduled)
            if landed:
                log.warning(
                    "%s: a write reported as failed had landed; dispatching %s",
                    self.uid,
                    ", ".join(i.name for i in landed),
                    extra={"uid": self.uid, "instance": None},
                )
                await self._dispatch(landed)
            return

    def _wake_at(self, key: str, at: float) -> None:
        """While this process lives, act on due entry `key` at `at` itself (any
        sweeper does it otherwise): the timer is durable, this is only prompt."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._wake(key, at), name=f"atriggers timer {self.uid} {key}")
        self._timers[task] = at
        task.add_done_callback(self._timers.pop)
        self.storage.track(task, timer=True)

    async def _wake(self, key: str, at: float) -> None:
        clock = self.storage.clock
        try:
            await sleep_until(clock, at)
            now = clock.time()
            for entry in await self.storage.claim_due(now, now + self.claim_for, 1, [(self.uid, key)]):
                await self.handle_due(entry)
        except TriggerError as exc:
            log.warning(
                "%s: timer %s failed (a sweeper will act on it): %s",
                self.uid,
                key,
                exc,
                extra={"uid": self.uid, "instance": None if is_delay_key(key) else key},
            )

    async def record_failure(
        self, instance: InstanceRef, exc: BaseException, log_level: int | None = None
    ) -> TaskInstance | None:
        """Store a scheduled or running instance as ``failed`` because of `exc`
        (a task error, a cancelled run, a run that could not start). Runners use
        it; the instance can then be replayed. No-op for instances in other
        statuses. Completes even if the caller is cancelled."""
        return await self._shielded(self._fail(_name_of(instance), exc, log_level))

    async def _fail(
        self,
        name: str,
        exc: BaseException,
        log_level: int | None = None,
        *,
        dispatching: bool = False,
        token: str | None = None,
    ) -> TaskInstance | None:
        meta = exception_metadata(exc)
        if log_level is not None:
            meta[Meta.LOG_LEVEL] = log_level
        meta.update(self._logs_of(token))
        # A dispatch error only fails an instance still waiting: a runner may raise
        # after handing the instance over (a lost reply), and a worker that already
        # started it owns its outcome.
        statuses = (Status.SCHEDULED,) if dispatching else (Status.SCHEDULED, Status.RUNNING)
        failed = await self._apply(lambda d: rules.fail(d, name, meta, statuses, token), [name])
        return failed.snapshot() if failed else None

    async def _dispatch(self, instances: list[TaskInstance]) -> None:
        for instance in instances:
            not_before = instance.metadata.get(Meta.NOT_BEFORE)
            if isinstance(not_before, str):
                # A cooldown: a durable timer in the due index; this process acts
                # on it on time while it lives, any sweeper does otherwise.
                self._wake_at(instance.name, from_iso(not_before))
                continue
            using = instance.config.using if instance.config else None
            runner_name = instance.runner or using or self.default_runner
            try:
                runner = self.runners.get(runner_name)
                await telemetry.dispatch(runner_name, instance, runner.run(self, instance))
            except Exception as exc:  # noqa: BLE001 - stored on the instance
                log.warning(
                    "dispatching %s/%s failed: %r",
                    self.uid,
                    instance.name,
                    exc,
                    extra={"uid": self.uid, "instance": instance.name},
                )
                placed = self._started.pop(instance.name, None)
                try:
                    if placed is None:
                        await self._fail(instance.name, exc, dispatching=True)
                    else:  # started by its write, never handed over: that run fails
                        placed.release()
                        await self._fail(instance.name, exc, token=placed.token)
                except TriggerError:
                    log.exception(
                        "%s/%s could not be dispatched and its failure could not be "
                        "stored: it stays scheduled until an operator fails and replays it",
                        self.uid,
                        instance.name,
                        extra={"uid": self.uid, "instance": instance.name},
                    )

    # -- the operation loop -------------------------------------------------------------

    async def _shielded(self, operation: Coroutine[Any, Any, T]) -> T:
        """Run an operation that stores then dispatches to its end even if the
        caller is cancelled: a stored ``scheduled`` must always be dispatched."""
        outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        runs = self.storage.runs
        task = _start(_settle(operation, outcome, runs))
        if outcome.done():
            # Ran to its end eagerly, in this turn of the loop: nothing to track.
            return outcome.result()
        runs.track_step(task)
        # `join` waits for it too (a fire whose caller was cancelled goes on: what
        # it starts is this manager's work all the same). Dropped from the set
        # here rather than by a done callback, which would cost a loop turn.
        self._inflight.add(task)
        try:
            # A cancelled caller cancels only `outcome`, never the operation.
            result = await outcome
        except asyncio.CancelledError:
            if task.done():
                self._untrack(task)
            else:
                task.add_done_callback(self._untrack)
            raise
        except BaseException:
            self._untrack(task)
            raise
        self._untrack(task)
        return result

    async def _apply(self, rule: Callable[[Draft], T], names: Collection[str] = ()) -> T:
        """Lock, read, apply `rule` to a draft, compare-and-swap write; retry."""
        storage = self.storage
        fresh = False
        outcome: list[T] = []
        placer, placement = self._placer, self._placement
        if (
            placement.default_runner != self.default_runner
            or placer.runners is not self.runners
            or placer.storage is not storage
            or placer.tasks is not self.tasks
        ):  # (public attributes: a caller may have set them since)
            placer = self._placer = _Placer(self.runners, storage, self.tasks)
            placement = self._placement = placer.placement(self.default_runner)
        placer.unheld = False
        placer.loop = asyncio.get_running_loop()
        taken = placer.taken

        note: telemetry.Note | None = None
        # The change the storage tried last (its own re-application of the
        # operation, if it made one), and where the runs its draft started begin
        # in `taken`: what a write whose reply was lost may have stored.
        attempted: Change | None = None
        first_run = 0

        def reapply(current: SessionState) -> Change | None:
            nonlocal note, attempted, first_run
            attempted, first_run = None, len(taken)
            redo = Draft(current, at=storage.clock.time(), placement=placement)
            outcome[:] = [rule(redo)]
            if placer.unheld:
                raise _Unheld  # (nothing written: `_apply` registers the lease, decides again)
            if not redo.changed:
                note = None
                return None
            if note is not None:  # (maybe in storage's thread: the first note has the context)
                note = telemetry.prepare_again(redo, note)
            attempted = redo.changes()
            return attempted

        async with storage.lock(self.uid):
            try:
                for attempt in range(self.max_attempts):
                    if taken:  # the runs the last attempt started: it wrote nothing
                        self._keep_started(taken, None)
                    state = await storage.read(self.uid, names, fresh=fresh)
                    draft = Draft(state, at=storage.clock.time(), placement=placement)
                    try:
                        result = rule(draft)
                    except (InstanceNotFound, InvalidStatus, InvalidInput):
                        if fresh:
                            raise
                        # The cached snapshot may be stale: refuse only what storage says.
                        fresh = True
                        continue
                    if placer.unheld:
                        # First in-process dispatch of this process: register its lease
                        # (one write, once), then decide again.
                        placer.unheld = False
                        await storage.lease.acquire()
                        continue
                    if not draft.changed:
                        if fresh:
                            return result
                        fresh = True
                        continue
                    outcome[:] = [result]
                    note = telemetry.prepare(draft)
                    change = attempted = draft.changes()
                    first_run = 0
                    try:
                        written = await storage.write(change, reapply)
                    except _Unheld:
                        # Re-applied to a newer state, the operation placed an instance
                        # here for the first time (a guessed or stale snapshot did not).
                        placer.unheld = False
                        await storage.lease.acquire()
                        continue
                    except StorageError:
                        # The write may have landed without our hearing it: instances it
                        # placed in this process would then wait for a dispatch forever.
                        if attempted is not None:
                            self._reconcile_later(attempted, taken[first_run:])
                        raise
                    except VersionConflict:
                        telemetry.conflict(retried=attempt + 1 < self.max_attempts)
                        fresh = False  # the conflict left the current state in the cache
                        if attempt:
                            # The first retry goes at once, on the state the conflict
                            # brought back; later ones spread out so writers stop colliding.
                            await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
                        continue
                    if taken:
                        self._keep_started(taken, written)
                    if note is not None:
                        telemetry.committed(note)
                    return outcome[0]
            finally:
                if taken:  # the runs an attempt that raised started
                    self._keep_started(taken, None)
        raise ConcurrencyError(
            f"session {self.uid!r} kept changing under concurrent writers; "
            f"gave up after {self.max_attempts} attempts with nothing written"
        )


class _Unheld(Exception):
    """A re-applied operation would hold an instance in this process, which has
    no lease yet: not written; registered first, then decided again."""


class _Placer:
    """Where a manager's scheduled instances go: the callbacks of its
    `Placement` (called under the session lock). Not the manager's own methods:
    the placement it keeps would then refer back to it, and a manager made per
    request would be a reference cycle, freed only by the garbage collector."""

    __slots__ = ("loop", "runners", "storage", "taken", "tasks", "unheld")

    def __init__(self, runners: RunnerRegistry, storage: Storage, tasks: TaskRegistry) -> None:
        self.runners = runners
        self.storage = storage
        self.tasks = tasks
        #: An in-process dispatch found no lease owner: `_apply` registers the
        #: lease and decides again.
        self.unheld = False
        #: The loop of the operation being applied (its runs' slots are that loop's).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: The runs the operation's drafts started as they placed them (every
        #: draft: a conflict re-applies it): `_apply` keeps those of the draft
        #: written and gives the others' slots back.
        self.taken: list[_PlacedRun] = []

    def placement(self, default_runner: str) -> Placement:
        return Placement(default_runner, self.holder, self.start_within, self.start)

    def start(self, draft: Draft, instance: TaskInstance) -> None:
        """Start `instance`, just scheduled on an in-process runner and held
        here, in the same write, if its runner runs it at once (the asyncio
        runner with a free slot): one write fewer per run. May be called in
        storage's thread (a conflict re-applied while holding its lock)."""
        try:
            runner = self.runners.get(instance.runner or "")
        except UnknownRunner:
            return
        if type(runner).run is not AsyncioRunner.run or self.loop is None:
            return  # (a subclass that dispatches its own way starts runs its own way)
        assert isinstance(runner, AsyncioRunner)
        slots = runner.slots(self.loop)
        if not slots.take_now():
            return
        scheduled = instance.snapshot()
        token = os.urandom(16).hex()
        self.taken.append(_PlacedRun(instance, token, scheduled, slots))
        rules.start(draft, instance.name, token, instance.owner, None, _max_retries(self.tasks, instance))

    def holder(self, runner: str) -> str | None:
        # Instances an in-process runner will run are held by this process's
        # lease owner, so that they are recovered if the process dies.
        try:
            in_process = self.runners.get(runner).in_process
        except UnknownRunner:
            return None
        if not in_process:
            return None
        owner = self.storage.lease.current()
        if owner is None:
            self.unheld = True
        return owner

    def start_within(self, runner: str) -> float | None:
        try:
            return self.runners.get(runner).start_within
        except UnknownRunner:
            return None


def _max_retries(tasks: TaskRegistry, instance: TaskInstance) -> int:
    """The ``max_retries`` of the task `instance` runs (0 if not known here)."""
    if instance.config is None:
        return 0
    try:
        return tasks.get(instance.config.run).max_retries
    except UnknownTask:
        stored = instance.metadata.get(Meta.MAX_RETRIES)
        return stored if isinstance(stored, int) else 0


@dataclass(slots=True)
class _PlacedRun:
    """A run that the write placing its instance also started (stored
    ``running``, with its fencing `token`), on its way to the asyncio runner."""

    #: The instance as stored running (the draft's; `_run_placed` snapshots it).
    running: TaskInstance
    token: str
    #: The instance as it was scheduled: what the operation hands out.
    scheduled: TaskInstance
    #: The slots the run took one of (None: it takes one when it gets there).
    slots: _Slots | None

    def release(self) -> None:
        """Give its slot back (once)."""
        slots, self.slots = self.slots, None
        if slots is not None:
            slots.give_back()


async def _settle(operation: Coroutine[Any, Any, T], outcome: asyncio.Future[T], runs: RunTracker) -> None:
    """Run `operation` and hand its outcome to `outcome` from inside the task: the
    caller wakes on the next loop turn, not one later (as it would through the
    task's done callbacks and a shield). The task leaves the storage's `runs`
    itself, at its end, for the same reason."""
    try:
        result = await operation
    except asyncio.CancelledError:
        outcome.cancel()
        raise
    except BaseException as exc:
        if not outcome.done():  # (not if its caller was cancelled: then nobody hears it)
            outcome.set_exception(exc)
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt, SystemExit: for the loop to act on
    else:
        if not outcome.done():
            outcome.set_result(result)
    finally:
        runs.forget(asyncio.current_task())


if sys.version_info >= (3, 12):

    def _start(operation: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task running `operation` eagerly, up to its first suspension, in this
        turn of the loop: an operation that never waits (in memory, or on a cache
        hit with nothing to write) costs no loop iteration. Inside, as in any task,
        `asyncio.current_task()` is the operation's own (timeouts cancel it, not the
        caller), and it runs in a copy of the caller's context."""
        return asyncio.Task(operation, loop=asyncio.get_running_loop(), eager_start=True)

else:  # 3.11 has no eager start: the operation begins on the next turn.

    def _start(operation: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        return asyncio.get_running_loop().create_task(operation)


def _check_result(result: object, task: str) -> dict[str, Any]:
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        raise with_context(
            TypeError(
                f"task {task!r} returned {type(result).__name__}; a task must return a "
                f"mapping (the kwargs its cascade fires with) or None"
            ),
            {"actualResult": repr(result)[:1000]},
        )
    try:
        return object_arg(result, f"result of task {task!r}")
    except InvalidInput as exc:
        raise with_context(exc, {"actualResult": repr(result)[:1000]}) from exc


# -- manager registry, for remote workers -----------------------------------------------


def _manager_class(name: str, loaded: object) -> type[TriggerManager]:
    if not (isinstance(loaded, type) and issubclass(loaded, TriggerManager)):
        raise UnknownManager(f"entry point {name!r} of {ENTRY_POINT_GROUP!r} is not a TriggerManager class")
    return loaded


#: Manager classes by name, so remote workers and tools rebuild the right one.
managers: Registry[type[TriggerManager]] = Registry(
    "trigger manager",
    error=UnknownManager,
    group=ENTRY_POINT_GROUP,
    convert=_manager_class,
    name_of=lambda cls: cls.manager_name,
    hint="decorate the class with @atriggers.register_manager in a module the process imports",
)
managers.register(TriggerManager, "default")


def register_manager(cls: type[TriggerManager], name: str | None = None) -> type[TriggerManager]:
    """Let workers rebuild `cls` by name (default: ``cls.manager_name``).
    Usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, TriggerManager)):
        raise TypeError(f"register a TriggerManager subclass, not {cls!r}")
    return managers.register(cls, name)


def get_manager_class(name: str) -> type[TriggerManager]:
    """The manager class registered under `name` (or in the entry-point group);
    `UnknownManager` if none."""
    return managers.get(name)


#: `_run_body`'s answer for a run that overran its deadline (already recorded lost).
_LOST = object()


def _lost_metadata(
    uid: str, instance: TaskInstance, entry: DueEntry
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metadata of a lost instance: as failed with `InstanceLost`, and as
    failed with `MaxRetriesExceeded` when its retries are used up."""
    meta = instance.metadata
    held_by = instance.owner
    if entry.lapsed:
        reason = f"the process holding it ({held_by}) stopped renewing its lease"
    elif isinstance(meta.get(Meta.DEADLINE), str) and instance.status is Status.SCHEDULED:
        reason = (
            f"it was handed to runner {instance.runner!r} but did not start by {meta[Meta.DEADLINE]} "
            f"(a dropped message or event?)"
        )
    elif isinstance(meta.get(Meta.DEADLINE), str):
        reason = f"its run did not store an outcome by its deadline {meta[Meta.DEADLINE]}"
    else:
        reason = "its owner stopped"
    context = {
        "status": instance.status.value,
        "owner": held_by,
        "runner": instance.runner,
        "deadline": meta.get(Meta.DEADLINE),
        "ownerStopped": entry.lapsed,
    }
    error = with_context(InstanceLost(f"{uid}/{instance.name} was lost: {reason}"), context)
    exceeded = with_context(
        MaxRetriesExceeded(f"{uid}/{instance.name} was lost ({reason}) and its task has no retries left"),
        context,
    )
    return exception_metadata(error), exception_metadata(exceeded)
