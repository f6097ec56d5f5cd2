"""The session index's pure part: `summarize` and when a change re-indexes."""

from __future__ import annotations

from atriggers import Status
from atriggers import _rules as rules
from atriggers.config import parse_configuration
from atriggers.state import Change, Draft, SessionState
from atriggers.storage import SessionFilter, summarize
from atriggers.storage.index import reindexed

TASKS = parse_configuration(
    {"work": {"after": ["go"], "run": "x.y"}, "later": {"after": ["go", "never"], "run": "x.y"}}
)


def step(state: SessionState, apply: object) -> Change:
    draft = Draft(state, at=1000.0)
    apply(draft)  # type: ignore[operator]
    return draft.changes()


def test_summarize_counts_unresolved_statuses_and_the_rest_as_resolved() -> None:
    configured = step(SessionState(uid="u"), lambda d: rules.configure(d, TASKS))
    fired = step(configured.state, lambda d: rules.fire(d, "go", {}))
    failed = step(fired.state, lambda d: d.set_status(d.edit("work#0"), Status.FAILED))
    replayed = step(failed.state, lambda d: rules.replay(d, "work#0"))
    summary = summarize(replayed)
    assert summary.uid == "u" and summary.version == 4 and summary.last_activity == 1000.0
    assert summary.counts == {"unstarted": 1, "scheduled": 1, "running": 0, "failed": 0, "resolved": 1}
    assert summary.tasks == ("later", "work") and summary.stuck and summary.waiting and not summary.failed
    assert summarize(failed).failed
    assert SessionFilter(failed=True, task="work").matches(summarize(failed))
    assert not SessionFilter(prefix="v").matches(summary)


def test_only_changes_that_move_the_counts_reindex() -> None:
    new = step(SessionState(uid="u"), lambda d: rules.fire(d, "go", {}))
    assert new.reindex and reindexed(new) is not None  # a new session is indexed
    configured = step(new.state, lambda d: rules.configure(d, TASKS))
    assert configured.reindex
    fired = step(configured.state, lambda d: rules.fire(d, "go", {}))
    assert fired.reindex  # instances created
    again = step(fired.state, lambda d: rules.fire(d, "other", {"k": 1}))
    assert not again.reindex and reindexed(again) is None  # kwargs only
    meta = step(fired.state, lambda d: rules.update_metadata(d, "work#0", {"note": 1}))
    assert not meta.reindex
    failed = step(fired.state, lambda d: d.set_status(d.edit("work#0"), Status.FAILED))
    assert failed.reindex
