"""`SnapshotCache`: recent working snapshots of sessions, so that a fire in a
steady process costs one write and no read."""

from __future__ import annotations

from collections import OrderedDict

from ..state import SessionState

__all__ = ["SnapshotCache"]


class SnapshotCache:
    """The working snapshots (``complete=False``) of the `size` sessions used
    last. A cached snapshot may be stale when another process wrote since: the
    compare-and-swap of the next write catches that, so the cache only saves reads.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._states: OrderedDict[str, SessionState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, uid: str) -> SessionState | None:
        state = self._states.get(uid)
        if state is not None:
            self._states.move_to_end(uid)
        return state

    def remember(self, state: SessionState) -> None:
        """Keep `state` as the latest known snapshot of its session (complete
        snapshots are not kept: operations work on the working view)."""
        if self.size <= 0 or state.complete:
            return
        self._states[state.uid] = state
        self._states.move_to_end(state.uid)
        while len(self._states) > self.size:
            self._states.popitem(last=False)

    def forget(self, uid: str) -> None:
        self._states.pop(uid, None)

    def clear(self) -> None:
        self._states.clear()
