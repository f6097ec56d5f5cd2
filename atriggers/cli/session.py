"""The storage, session and manager a command works on, with the errors an
operator can act on (mistyped path, unknown session, manager or runner)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from .._json import check_name
from ..manager import TriggerManager, get_manager_class
from ..runners import get_runner
from ..state import SessionState
from ..storage import Storage, open_storage
from .exits import CommandError, ExitCode

__all__ = ["existing_session", "load_session", "manager_for", "opened_storage"]


@asynccontextmanager
async def opened_storage(url: str, *, create: bool = False) -> AsyncIterator[Storage]:
    """The storage at `url`, open; unless `create`, it must exist already."""
    try:
        storage = open_storage(url)
    except ValueError as exc:
        raise CommandError(str(exc), ExitCode.USAGE) from None
    # Opening a SQLite path creates the file: a mistyped path must not silently
    # become an empty database.
    if not create and not await storage.exists():
        raise CommandError(f"no storage at {storage.safe_url}", ExitCode.NOT_FOUND)
    async with storage:
        yield storage


async def existing_session(storage: Storage, uid: str, names: Sequence[str] | None = None) -> SessionState:
    """The whole session, or with `names` its working view (unresolved instances
    plus those named), which costs nothing per resolved instance."""
    check_name(uid, "uid")
    state = await (storage.load_all(uid) if names is None else storage.load(uid, names))
    if state.version == 0:
        raise CommandError(
            f"no session {uid!r} in {storage.safe_url} "
            f"(list them with: atriggers sessions {storage.safe_url})",
            ExitCode.NOT_FOUND,
        )
    return state


async def load_session(url: str, uid: str) -> SessionState:
    """The whole session `uid` stored at `url`."""
    async with opened_storage(url) as storage:
        return await existing_session(storage, uid)


def manager_for(storage: Storage, uid: str, args: argparse.Namespace) -> TriggerManager:
    """The ``--manager`` class over `storage`, with the ``--runner`` default."""
    try:
        cls = get_manager_class(args.manager)
    except LookupError as exc:
        raise CommandError(f"--manager: {exc}", ExitCode.USAGE) from None
    runner = getattr(args, "runner", None)
    if runner is not None:
        try:
            get_runner(runner)
        except LookupError as exc:
            raise CommandError(f"--runner: {exc}", ExitCode.USAGE) from None
    return cls(storage, uid, default_runner=runner)
