"""The rules of what an operation does, as pure functions over a snapshot: no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from atriggers import InstanceNotFound, InvalidStatus, SessionState, Status, parse_configuration
from atriggers import _rules as rules
from atriggers.state import Draft


def session(configuration: dict[str, Any]) -> SessionState:
    draft = Draft(SessionState(uid="u"))
    rules.configure(draft, parse_configuration(configuration))
    return draft.changes().state


class Session:
    """Applies rules one after another, as the manager would (minus storage)."""

    def __init__(self, configuration: dict[str, Any]) -> None:
        self.state = session(configuration)

    def apply(self, rule: Any, *args: Any) -> Any:
        draft = Draft(self.state)
        result = rule(draft, *args)
        self.state = draft.changes().state
        return result

    def fire(self, trigger: str, kwargs: dict[str, Any] | None = None) -> list[str]:
        return [i.name for i in self.apply(rules.fire, trigger, kwargs or {})]

    def status(self, name: str) -> Status:
        return self.state.instances[name].status

    def run(self, name: str, result: dict[str, Any] | None = None) -> list[str]:
        self.apply(rules.start, name)
        _, ready = self.apply(rules.finish, name, result or {}, 0)
        return [i.name for i in ready]


QUESTIONNAIRE = {
    "t_importSubject": {"after": ["firstPageReceived", "questionnaireComplete"], "run": "subject"},
    "t_importResponses": {"after": ["t_importSubject"], "andEvery": "pageReceived", "run": "responses"},
    "t_importBrowserMetadata": {
        "after": ["t_importSubject", "pageReceived"],
        "unless": ["isEmbeddedApplication"],
        "run": "browser",
    },
}


def test_one_shot_task_waits_for_every_after_trigger() -> None:
    s = Session(QUESTIONNAIRE)
    assert s.fire("questionnaireComplete", {"pages": 3}) == []
    assert s.status("t_importSubject#0") is Status.UNSTARTED
    assert s.fire("firstPageReceived", {"name": "Ada"}) == ["t_importSubject#0"]
    instance = s.state.instances["t_importSubject#0"]
    assert instance.kwargs == {"questionnaireComplete": {"pages": 3}, "firstPageReceived": {"name": "Ada"}}
    # A one-shot task runs once, however often its triggers fire again.
    assert s.fire("firstPageReceived", {"name": "Bob"}) == []
    assert s.state.instance_counts["t_importSubject"] == 1


def test_and_every_makes_one_instance_per_firing_and_waits_for_after() -> None:
    s = Session(QUESTIONNAIRE)
    assert s.fire("pageReceived", {"page": 1}) == []
    assert s.fire("pageReceived", {"page": 2}) == []
    assert s.fire("pageReceived", {"page": 3}) == []
    pages = [s.state.instances[f"t_importResponses#{n}"].kwargs["pageReceived"]["page"] for n in range(3)]
    assert pages == [1, 2, 3]
    s.fire("firstPageReceived")
    ready = s.fire("questionnaireComplete")
    assert ready == ["t_importSubject#0"]
    cascade = s.run("t_importSubject#0", {"subjectId": 7})
    assert sorted(cascade) == [
        "t_importBrowserMetadata#0",
        "t_importResponses#0",
        "t_importResponses#1",
        "t_importResponses#2",
    ]
    # Later pages: one new instance each, born with the latest subject kwargs.
    assert s.fire("pageReceived", {"page": 4}) == ["t_importResponses#3"]
    assert s.state.instances["t_importResponses#3"].kwargs == {
        "t_importSubject": {"subjectId": 7},
        "pageReceived": {"page": 4},
    }


def test_first_trigger_of_and_every_task_fills_the_first_instance() -> None:
    s = Session(QUESTIONNAIRE)
    s.fire("firstPageReceived")
    s.fire("questionnaireComplete")
    s.run("t_importSubject#0")
    # t_importSubject created t_importResponses#0, waiting for a page.
    assert s.status("t_importResponses#0") is Status.UNSTARTED
    assert s.fire("pageReceived", {"page": 1}) == ["t_importResponses#0", "t_importBrowserMetadata#0"]
    assert s.fire("pageReceived", {"page": 2}) == ["t_importResponses#1"]


def test_unless_abandons_unstarted_instances_and_new_ones() -> None:
    s = Session(QUESTIONNAIRE)
    s.fire("pageReceived")
    assert s.status("t_importBrowserMetadata#0") is Status.UNSTARTED
    s.fire("isEmbeddedApplication")
    assert s.status("t_importBrowserMetadata#0") is Status.ABANDONED
    s.fire("firstPageReceived")
    s.fire("questionnaireComplete")
    assert "t_importBrowserMetadata#0" not in s.run("t_importSubject#0")
    assert s.state.instance_counts["t_importBrowserMetadata"] == 1


def test_unless_before_any_instance_abandons_at_creation() -> None:
    s = Session(QUESTIONNAIRE)
    s.fire("isEmbeddedApplication")
    assert s.status("t_importBrowserMetadata#0") is Status.ABANDONED
    s.fire("pageReceived")
    assert s.state.instance_counts["t_importBrowserMetadata"] == 1


def test_unless_never_recalls_scheduled_work() -> None:
    s = Session({"t": {"after": ["a"], "unless": ["stop"], "run": "r"}})
    assert s.fire("a") == ["t#0"]
    s.fire("stop")
    assert s.status("t#0") is Status.SCHEDULED


def test_unless_with_several_triggers_needs_all_of_them() -> None:
    s = Session({"t": {"after": ["a", "b"], "unless": ["x", "y"], "run": "r"}})
    s.fire("a")
    s.fire("x")
    assert s.status("t#0") is Status.UNSTARTED
    s.fire("y")
    assert s.status("t#0") is Status.ABANDONED


def test_latest_kwargs_are_remembered_and_new_instances_start_with_them() -> None:
    s = Session({"t": {"after": ["a"], "andEvery": "tick", "run": "r"}})
    s.fire("a", {"v": 1})
    s.fire("a", {"v": 2})
    assert s.state.latest_kwargs["a"] == {"v": 2}
    assert s.fire("tick", {"n": 1}) == ["t#0"]
    assert s.state.instances["t#0"].kwargs["a"] == {"v": 1}  # it was applied on creation
    assert s.fire("tick", {"n": 2}) == ["t#1"]
    assert s.state.instances["t#1"].kwargs == {"a": {"v": 2}, "tick": {"n": 2}}


def test_task_added_after_its_triggers_fired_uses_latest_kwargs() -> None:
    s = Session({"t_first": {"after": ["a"], "run": "r"}})
    s.fire("b", {"from": "b"})
    s.apply(rules.configure, parse_configuration({"t_late": {"after": ["a", "b"], "run": "r"}}))
    assert s.fire("a") == ["t_first#0", "t_late#0"]
    assert s.state.instances["t_late#0"].kwargs["b"] == {"from": "b"}


def test_instance_names_count_per_task() -> None:
    s = Session(
        {"x": {"after": [], "andEvery": "t", "run": "r"}, "y": {"after": [], "andEvery": "t", "run": "r"}}
    )
    for _ in range(3):
        s.fire("t")
    assert sorted(s.state.instances) == ["x#0", "x#1", "x#2", "y#0", "y#1", "y#2"]


def test_cascade_fires_task_name_with_result() -> None:
    s = Session({"t_a": {"after": ["go"], "run": "r"}, "t_b": {"after": ["t_a"], "run": "r"}})
    s.fire("go")
    assert s.run("t_a#0", {"answer": 42}) == ["t_b#0"]
    assert s.state.instances["t_b#0"].kwargs == {"t_a": {"answer": 42}}
    assert s.state.instances["t_a#0"].result == {"answer": 42}


def test_start_records_actual_kwargs_with_params_merged_under() -> None:
    s = Session(
        {
            "t": {
                "after": ["go"],
                "run": "r",
                "withParams": {"scoring": {"model": "Psych 01", "v": 1}, "go": {"extra": True, "x": 0}},
            }
        }
    )
    s.fire("go", {"x": 5})
    running = s.apply(rules.start, "t#0")
    assert running.status is Status.RUNNING
    assert running.metadata["actualKwargs"] == {
        "scoring": {"model": "Psych 01", "v": 1},
        "go": {"extra": True, "x": 5},
    }


def test_merge_params_is_recursive_and_fired_values_win() -> None:
    merged = rules.merge_params({"a": {"b": {"c": 1, "d": 2}, "e": 3}}, {"a": {"b": {"c": 9}}, "f": 4})
    assert merged == {"a": {"b": {"c": 9, "d": 2}, "e": 3}, "f": 4}


def test_start_refuses_an_instance_that_is_not_scheduled() -> None:
    s = Session({"t": {"after": ["go"], "run": "r"}})
    s.fire("go")
    assert s.apply(rules.start, "t#0") is not None
    assert s.apply(rules.start, "t#0") is None  # a second delivery must not run it again


def test_replay_clones_failed_instance() -> None:
    s = Session({"t": {"after": ["go"], "run": "r"}})
    s.fire("go", {"v": 1})
    s.apply(rules.start, "t#0")
    s.apply(rules.fail, "t#0", {"exceptionType": "builtins.ValueError"})
    clone = s.apply(rules.replay, "t#0", None)
    assert clone.name == "t#1"
    assert clone.status is Status.SCHEDULED
    assert clone.parent == "t#0" and clone.depth == 1
    assert clone.kwargs == {"go": {"v": 1}}
    assert s.status("t#0") is Status.REPLAYED


def test_replay_with_replacement_kwargs() -> None:
    s = Session({"t": {"after": ["go"], "run": "r"}})
    s.fire("go", {"v": 1})
    s.apply(rules.start, "t#0")
    s.apply(rules.fail, "t#0", {})
    clone = s.apply(rules.replay, "t#0", {"go": {"v": 2}})
    assert clone.kwargs == {"go": {"v": 2}}


@pytest.mark.parametrize("rule", [rules.replay, rules.skip])
def test_replay_and_skip_only_failed_instances(rule: Any) -> None:
    s = Session({"t": {"after": ["go"], "run": "r"}})
    s.fire("go")
    with pytest.raises(InvalidStatus, match="scheduled"):
        s.apply(rule, "t#0")
    with pytest.raises(InstanceNotFound, match="t#9"):
        s.apply(rule, "t#9")


def test_skip_with_cascade_fires_result() -> None:
    s = Session({"t_a": {"after": ["go"], "run": "r"}, "t_b": {"after": ["t_a"], "run": "r"}})
    s.fire("go")
    s.apply(rules.start, "t_a#0")
    s.apply(rules.fail, "t_a#0", {})
    skipped, ready = s.apply(rules.skip, "t_a#0", True, {"fake": 1})
    assert skipped.status is Status.SKIPPED
    assert [i.name for i in ready] == ["t_b#0"]
    assert s.state.instances["t_b#0"].kwargs == {"t_a": {"fake": 1}}


def test_skip_without_cascade_fires_nothing() -> None:
    s = Session({"t_a": {"after": ["go"], "run": "r"}, "t_b": {"after": ["t_a"], "run": "r"}})
    s.fire("go")
    s.apply(rules.start, "t_a#0")
    s.apply(rules.fail, "t_a#0", {})
    _, ready = s.apply(rules.skip, "t_a#0")
    assert ready == [] and "t_b#0" not in s.state.instances


def test_retry_replays_with_cooldown_and_depth() -> None:
    s = Session({"t": {"after": ["go"], "run": "r"}})
    s.fire("go")
    s.apply(rules.start, "t#0")
    clone = s.apply(rules.retry, "t#0", {"cooldown": 5}, None)
    assert s.status("t#0") is Status.REPLAYED
    assert clone.cooldown == 5 and clone.depth == 1 and clone.status is Status.SCHEDULED


def test_timestamps_record_each_status() -> None:
    s = Session({"t": {"after": ["go"], "run": "r"}})
    s.fire("go")
    s.run("t#0")
    stamps = s.state.instances["t#0"].timestamps
    assert {"created", "lastModified", "unstarted", "scheduled", "running", "finished"} <= stamps.keys()
    assert stamps["created"].endswith("+00:00")


def test_snapshot_is_not_changed_by_rules() -> None:
    s = Session({"t": {"after": ["go"], "run": "r"}})
    before = s.state
    s.fire("go")
    assert before.instances == {} and before.version == 1 and s.state.version == 2


def test_working_snapshot_drops_resolved_instances() -> None:
    s = Session({"t": {"after": [], "andEvery": "go", "run": "r"}})
    s.state = SessionState(
        **{**{f: getattr(s.state, f) for f in s.state.__dataclass_fields__}, "complete": False}
    )
    s.fire("go")
    s.run("t#0")
    assert "t#0" not in s.state.instances  # resolved: no longer part of the working view
    assert s.state.instance_counts["t"] == 1
    assert s.fire("go") == ["t#1"]
