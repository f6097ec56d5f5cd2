"""Configuration validation: every bad case named, nothing stored."""

from __future__ import annotations

from typing import Any

import pytest

from atriggers import ConfigurationError, TaskConfig, TriggerManager, parse_configuration
from atriggers.storage import SQLiteStorage

GOOD = {"after": ["a"], "run": "noop"}


@pytest.mark.parametrize(
    ("body", "directive", "words"),
    [
        ({"run": "x"}, "after", "required"),
        ({"after": ["a"]}, "run", "required"),
        ({"after": "a", "run": "x"}, "after", "not a single string"),
        ({"after": [], "run": "x"}, "after", "andEvery"),
        ({"after": ["a", ""], "run": "x"}, "after", "non-empty"),
        ({"after": ["a", 3], "run": "x"}, "after", "non-empty"),
        ({"after": {"a": 1}, "run": "x"}, "after", "list"),
        ({"after": ["a"], "run": ""}, "run", "non-empty"),
        ({"after": ["a"], "run": "x", "andEvery": ["p"]}, "andEvery", "one non-empty string"),
        ({"after": ["a"], "run": "x", "andEvery": ""}, "andEvery", "one non-empty string"),
        ({"after": ["a"], "run": "x", "unless": "e"}, "unless", "not a single string"),
        ({"after": ["a"], "run": "x", "withParams": {"model": "Psych 01"}}, "withParams", "dict of dicts"),
        ({"after": ["a"], "run": "x", "withParams": ["x"]}, "withParams", "dict of dicts"),
        ({"after": ["a"], "run": "x", "using": 5}, "using", "string"),
        ({"after": ["a"], "run": "x", "lambdaFunction": {1, 2}}, "lambdaFunction", "JSON"),
    ],
)
def test_bad_directive_names_task_and_directive(body: dict[str, Any], directive: str, words: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_configuration({"t_bad": body})
    assert info.value.task == "t_bad"
    assert info.value.directive == directive
    message = str(info.value)
    assert "t_bad" in message and directive in message and words in message


@pytest.mark.parametrize("configuration", [["t_x"], "t_x", None, 3])
def test_configuration_must_be_a_mapping(configuration: object) -> None:
    with pytest.raises(ConfigurationError, match="configuration must be a dict"):
        parse_configuration(configuration)


def test_non_mapping_task_body_and_non_string_name() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_configuration({"t_a": ["after"], 7: GOOD})
    messages = [str(p) for p in info.value.problems]
    assert any("'t_a'" in m and "task config must be a dict" in m for m in messages)
    assert any("7" in m and "task names must be non-empty strings" in m for m in messages)


def test_every_problem_is_listed() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_configuration({"t_a": {"after": "x"}, "t_b": {"after": ["y"], "run": "r", "withParams": 1}})
    found = {(p.task, p.directive) for p in info.value.problems}
    assert found == {("t_a", "after"), ("t_a", "run"), ("t_b", "withParams")}


def test_after_as_set_list_or_tuple_are_equal() -> None:
    as_list = parse_configuration({"t": {"after": ["b", "a"], "run": "r"}})["t"]
    as_set = parse_configuration({"t": {"after": {"a", "b"}, "run": "r"}})["t"]
    as_tuple = parse_configuration({"t": {"after": ("a", "b"), "run": "r"}})["t"]
    assert as_list == as_set == as_tuple
    assert as_list.after == frozenset({"a", "b"})


def test_directives_are_parsed() -> None:
    config = parse_configuration(
        {
            "t_importResponses": {
                "after": ["t_importSubject"],
                "andEvery": "pageReceived",
                "run": "app.Import",
                "unless": ["stop"],
                "withParams": {"scoring": {"model": "Psych 01"}},
                "using": "celery",
                "lambdaFunction": "fn",
                "priority": 3,
            }
        }
    )["t_importResponses"]
    assert isinstance(config, TaskConfig)
    assert config.after == {"t_importSubject", "pageReceived"}  # andEvery is implicitly required
    assert config.and_every == "pageReceived"
    assert config.unless == {"stop"}
    assert config.with_params == {"scoring": {"model": "Psych 01"}}
    assert config.using == "celery"
    assert config.extras == {"lambdaFunction": "fn", "priority": 3}
    assert TaskConfig.from_dict(config.name, config.to_dict()) == config


def test_empty_after_is_fine_with_and_every() -> None:
    config = parse_configuration({"t": {"after": [], "andEvery": "tick", "run": "r"}})["t"]
    assert config.after == {"tick"}


async def test_bad_configuration_stores_nothing(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "s1")
    await manager.update_configuration({"t_good": GOOD})
    before = await manager.get_state()
    with pytest.raises(ConfigurationError):
        await manager.update_configuration({"t_new": GOOD, "t_bad": {"after": "a", "run": "x"}})
    after = await manager.get_state()
    assert after.version == before.version
    assert set(after.tasks) == {"t_good"}


async def test_update_merges_and_replaces_by_name(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "s1")
    await manager.update_configuration({"t_a": GOOD, "t_b": GOOD})
    await manager.update_configuration({"t_b": {"after": ["z"], "run": "other"}, "t_c": GOOD})
    state = await manager.get_state()
    assert set(state.tasks) == {"t_a", "t_b", "t_c"}
    assert state.tasks["t_b"].run == "other"
    assert state.tasks["t_b"].after == {"z"}
