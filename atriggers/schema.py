"""The JSON Schema of configurations, generated from `atriggers.config.DIRECTIVES`.

Each directive's value schema, description and required flag come from the same
table `validate_configuration` checks against, so the published schema
(``schema/atriggers-config.schema.json``, written by ``atriggers schema``) cannot
drift from the validator. Only the one rule that spans two directives (an empty
``after`` needs ``andEvery``) is restated here; a test checks that both agree.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from .config import _NAME_SCHEMA, DIRECTIVES

__all__ = ["SCHEMA_DRAFT", "configuration_schema", "schema_json"]

#: Draft-07 is the draft editors (VS Code, JetBrains, yaml-language-server) support best.
SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"


def _task_schema() -> dict[str, Any]:
    properties = {
        name: {"description": directive.description, **copy.deepcopy(dict(directive.schema))}
        for name, directive in DIRECTIVES.items()
    }
    return {
        "type": "object",
        "description": (
            "One trigger task: which triggers it waits for and what it runs. Directives "
            "other than the ones listed are custom directives, kept as given."
        ),
        "properties": properties,
        "required": [name for name, directive in DIRECTIVES.items() if directive.required],
        # Custom directives are allowed (kept on TaskConfig.extras).
        "additionalProperties": True,
        "if": {
            "required": ["after"],
            "properties": {"after": {"type": "array", "maxItems": 0}},
        },
        "then": {
            "required": ["andEvery"],
            "properties": {"andEvery": dict(_NAME_SCHEMA)},
        },
    }


def configuration_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of an atriggers configuration: an object mapping
    task names to task configurations."""
    return {
        "$schema": SCHEMA_DRAFT,
        "title": "atriggers configuration",
        "description": (
            "Maps each trigger task name to its configuration, as passed to "
            "TriggerManager.update_configuration."
        ),
        "type": "object",
        "propertyNames": dict(_NAME_SCHEMA),
        "additionalProperties": {"$ref": "#/definitions/task"},
        "definitions": {"task": _task_schema()},
    }


def schema_json() -> str:
    """`configuration_schema` as the text of the published file."""
    return json.dumps(configuration_schema(), indent=2, sort_keys=False) + "\n"
