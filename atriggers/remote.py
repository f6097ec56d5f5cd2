"""Running an instance in another process (a Celery worker, a Lambda function).

The message sent is a small `RunRequest` naming the session, never its data: the
worker rebuilds storage (from the URL) and manager (by registered name), loads the
instance and runs it through `TriggerManager.run_instance`, the same code path as
the in-process runner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import _telemetry as telemetry
from ._tracecontext import is_traceparent
from .errors import InvalidInput, TriggerError
from .instance import TaskInstance
from .manager import TriggerManager, get_manager_class
from .storage.base import Storage
from .storage.registry import open_storage

__all__ = ["RunRequest", "StoragePool", "execute_request"]


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Which instance of which session to run, as a few hundred bytes of JSON."""

    storage_url: str
    uid: str
    instance: str
    manager: str = "default"
    #: The dispatching manager's default runner, so cascades the worker starts
    #: go where the application's would (None: the class's default).
    runner: str | None = None
    #: The W3C ``traceparent`` of the dispatch span (OpenTelemetry tracing on):
    #: the run's span in the worker is its child.
    traceparent: str | None = None

    @classmethod
    def for_instance(cls, manager: TriggerManager, instance: TaskInstance) -> RunRequest:
        """The request that runs `instance` of `manager`'s session elsewhere.

        Refuses a storage other processes cannot reach (``cross_process`` is
        false), and a manager class that workers could not rebuild by its name
        (its hooks and defaults would silently be lost there).
        """
        storage = manager.storage
        if not storage.cross_process:
            raise InvalidInput(
                f"cannot run {instance.name!r} in another process: session {manager.uid!r} lives "
                f"in a {storage.url} storage, which only this process can see; use a storage "
                f"workers can reach (sqlite:///..., redis://...)"
            )
        try:
            registered = get_manager_class(manager.manager_name)
        except LookupError:
            registered = None
        if registered is not type(manager):
            raise InvalidInput(
                f"{type(manager).__qualname__} cannot be rebuilt by a remote worker: give it its "
                f"own manager_name and decorate it with @atriggers.register_manager "
                f"(its manager_name {manager.manager_name!r} names "
                f"{registered.__qualname__ if registered else 'no registered class'})"
            )
        runner = manager.default_runner if manager.default_runner != type(manager).default_runner else None
        return cls(
            manager.storage.url,
            manager.uid,
            instance.name,
            manager.manager_name,
            runner,
            telemetry.current_traceparent(),
        )

    def to_dict(self) -> dict[str, str]:
        data = {
            "storage": self.storage_url,
            "uid": self.uid,
            "instance": self.instance,
            "manager": self.manager,
        }
        if self.runner is not None:
            data["runner"] = self.runner
        if self.traceparent is not None:
            data["traceparent"] = self.traceparent
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRequest:
        if not isinstance(data, Mapping):
            raise InvalidInput(f"a run request is a JSON object, not {type(data).__name__}")
        fields = {}
        for key in ("storage", "uid", "instance"):
            value = data.get(key)
            if not isinstance(value, str) or not value:
                raise InvalidInput(f"run request field {key!r} must be a non-empty string, got {value!r}")
            fields[key] = value
        manager = data.get("manager", "default")
        if not isinstance(manager, str) or not manager:
            raise InvalidInput(f"run request field 'manager' must be a non-empty string, got {manager!r}")
        runner = data.get("runner")
        if runner is not None and (not isinstance(runner, str) or not runner):
            raise InvalidInput(f"run request field 'runner' must be a non-empty string, got {runner!r}")
        # Trace context never fails a run: one that does not parse is left out.
        traceparent = data.get("traceparent")
        if not is_traceparent(traceparent):
            traceparent = None
        return cls(fields["storage"], fields["uid"], fields["instance"], manager, runner, traceparent)


class StoragePool:
    """Open storages by URL, kept open across requests: a worker pays for opening
    a database (or a connection pool) once, not per task."""

    def __init__(self) -> None:
        self._storages: dict[str, Storage] = {}
        # Concurrent first requests for one URL (a threads pool) open it once.
        self._opening = asyncio.Lock()

    async def get(self, url: str) -> Storage:
        """The open storage at `url`. A worker never creates a store: a URL
        naming one that does not exist (a new SQLite path) is refused."""
        storage = self._storages.get(url)
        if storage is None:
            async with self._opening:
                storage = self._storages.get(url)
                if storage is None:
                    try:
                        storage = open_storage(url)
                    except TriggerError:
                        raise
                    except ValueError as exc:
                        raise InvalidInput(f"run request field 'storage': {exc}") from exc
                    if not await storage.exists():
                        raise InvalidInput(f"no storage at {storage.safe_url}: a worker does not create one")
                    await storage.open()
                    self._storages[url] = storage
        return storage

    async def aclose(self) -> None:
        storages, self._storages = self._storages, {}
        for storage in storages.values():
            await storage.aclose()


async def execute_request(
    request: RunRequest, pool: StoragePool, *, deadline: float | None = None, owned: bool = True
) -> TaskInstance | None:
    """Run the requested instance and wait for in-process cascades it started.

    Returns the instance in its final state, or None if it was not scheduled (a
    duplicate delivery): each instance runs at most once. `deadline` and
    `owned` are `TriggerManager.run_instance`'s.
    """
    storage = await pool.get(request.storage_url)
    manager = get_manager_class(request.manager)(storage, request.uid, default_runner=request.runner)
    try:
        with telemetry.remote_parent(request.traceparent):
            return await manager.run_instance(request.instance, deadline=deadline, owned=owned)
    finally:
        # A retry's cooldown is not waited out here (it would hold the worker's
        # slot, or bill the function): its timer is durable and acted on on time.
        await manager.join(timers=False)
