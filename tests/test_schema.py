"""The published JSON Schema: generated from DIRECTIVES, up to date, and agreeing
with validate_configuration."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator

from atriggers.config import DIRECTIVES, validate_configuration
from atriggers.schema import configuration_schema, schema_json

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "schema" / "atriggers-config.schema.json"
REFERENCE = ROOT / "docs" / "configuration.md"


def test_published_file_is_the_generated_schema() -> None:
    assert PUBLISHED.read_text(encoding="utf-8") == schema_json(), (
        "schema/atriggers-config.schema.json is stale: run "
        "`atriggers schema --output schema/atriggers-config.schema.json`"
    )


def test_schema_is_a_valid_draft7_schema() -> None:
    Draft7Validator.check_schema(configuration_schema())


def test_every_directive_is_described_from_the_table() -> None:
    task = configuration_schema()["definitions"]["task"]
    assert set(task["properties"]) == set(DIRECTIVES)
    for name, directive in DIRECTIVES.items():
        prop = task["properties"][name]
        assert prop["description"] == directive.description
        assert {k: v for k, v in prop.items() if k != "description"} == dict(directive.schema)
    assert task["required"] == [n for n, d in DIRECTIVES.items() if d.required]


GOOD: list[Any] = [
    {},
    {"t_a": {"after": ["go"], "run": "app.a"}},
    {"t_a": {"after": ["go", "go"], "run": "app.a"}},
    {"t_a": {"after": [], "andEvery": "page", "run": "app.a"}},
    {"t_a": {"after": ["x"], "andEvery": None, "run": "app.a"}},
    {"t_a": {"after": ["x"], "run": "app.a", "unless": [], "using": None, "withParams": None}},
    {
        "t_a": {
            "after": ["t_b", "go"],
            "andEvery": "page",
            "unless": ["stop"],
            "withParams": {"scoring": {"model": "m", "nested": {"x": [1, 2]}}},
            "using": "celery",
            "run": "app.a",
            "priority": 3,
            "labels": {"team": "data"},
        },
        "t_b": {"after": ["go"], "run": "app.b"},
    },
]

BAD: list[Any] = [
    [],
    "t_a",
    None,
    {"": {"after": ["go"], "run": "app.a"}},
    {"   ": {"after": ["go"], "run": "app.a"}},
    {"t_a": "after go run app.a"},
    {"t_a": ["go"]},
    {"t_a": {"run": "app.a"}},
    {"t_a": {"after": ["go"]}},
    {"t_a": {"after": "go", "run": "app.a"}},
    {"t_a": {"after": [], "run": "app.a"}},
    {"t_a": {"after": [], "andEvery": None, "run": "app.a"}},
    {"t_a": {"after": [], "andEvery": "", "run": "app.a"}},
    {"t_a": {"after": [""], "run": "app.a"}},
    {"t_a": {"after": [" "], "run": "app.a"}},
    {"t_a": {"after": [1], "run": "app.a"}},
    {"t_a": {"after": {"go": 1}, "run": "app.a"}},
    {"t_a": {"after": ["go"], "run": ""}},
    {"t_a": {"after": ["go"], "run": ["app.a"]}},
    {"t_a": {"after": ["go"], "run": "app.a", "andEvery": ["page"]}},
    {"t_a": {"after": ["go"], "run": "app.a", "andEvery": 3}},
    {"t_a": {"after": ["go"], "run": "app.a", "unless": "stop"}},
    {"t_a": {"after": ["go"], "run": "app.a", "unless": [""]}},
    {"t_a": {"after": ["go"], "run": "app.a", "withParams": {"scoring": "m"}}},
    {"t_a": {"after": ["go"], "run": "app.a", "withParams": ["scoring"]}},
    {"t_a": {"after": ["go"], "run": "app.a", "using": ""}},
    {"t_a": {"after": ["go"], "run": "app.a", "using": 1}},
    {"t_a": {"after": ["go"], "run": "app.a"}, "t_b": {"after": "go", "run": 1}},
]


@pytest.mark.parametrize("configuration", GOOD, ids=lambda c: json.dumps(c)[:60])
def test_good_configurations_pass_both(configuration: Any) -> None:
    assert validate_configuration(configuration) == []
    errors = list(Draft7Validator(configuration_schema()).iter_errors(configuration))
    assert errors == []


@pytest.mark.parametrize("configuration", BAD, ids=lambda c: json.dumps(c)[:60])
def test_bad_configurations_fail_both(configuration: Any) -> None:
    problems = validate_configuration(configuration)
    errors = list(Draft7Validator(configuration_schema()).iter_errors(configuration))
    assert problems, "validate_configuration accepted it"
    assert errors, f"the schema accepted what validate_configuration rejects: {problems}"
    # The schema's errors point at the tasks the validator names.
    named = {p.task for p in problems if p.task is not None and not p.task.startswith("'")}
    located = {str(e.absolute_path[0]) for e in errors if e.absolute_path}
    assert named <= located | {str(e.instance) for e in errors if e.validator == "propertyNames"}


def _documented_directives() -> dict[str, str]:
    """Directive -> its row in the reference table of docs/configuration.md."""
    rows = {}
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\|\s*`(\w+)`\s*\|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_configuration_reference_documents_every_directive() -> None:
    rows = _documented_directives()
    assert set(rows) == set(DIRECTIVES), "docs/configuration.md table != DIRECTIVES"
    for name, directive in DIRECTIVES.items():
        required = rows[name].split("|")[0].strip()
        assert required == ("yes" if directive.required else "no"), name


def test_configuration_reference_examples_are_valid() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    assert blocks
    validator = Draft7Validator(configuration_schema())
    for block in blocks:
        configuration = json.loads(block)
        assert validate_configuration(configuration) == []
        assert validator.is_valid(configuration)
