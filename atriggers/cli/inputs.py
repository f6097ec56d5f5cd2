"""What the ``atriggers`` command reads: files, JSON arguments, configurations,
and the application modules named with ``--import``."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ..config import validate_configuration
from ..errors import Problem
from .exits import CommandError, ExitCode
from .render import problems_table

__all__ = ["checked_configuration", "import_modules", "json_object", "read_text"]


def read_text(path: str, what: str) -> str:
    """The file's text (``-``: standard input); `what` names it in errors."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CommandError(f"{what}: no such file {path!r}", ExitCode.USAGE) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{what}: cannot read {path!r}: {exc}", ExitCode.USAGE) from None


def _json_text(text: str, what: str) -> Any:
    """Parse a JSON command-line value; ``@path`` reads it from a file."""
    source = what
    if text.startswith("@"):
        source = f"{what} file {text[1:]!r}"
        text = read_text(text[1:], source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            ExitCode.USAGE,
        ) from None
    except RecursionError:
        raise CommandError(f"{source} nests too deeply", ExitCode.USAGE) from None


def json_object(text: str | None, what: str) -> dict[str, Any] | None:
    """A JSON object given on the command line (or ``@file``), None if not given."""
    if text is None:
        return None
    value = _json_text(text, what)
    if not isinstance(value, dict):
        raise CommandError(f"{what} must be a JSON object, not {type(value).__name__}", ExitCode.USAGE)
    return value


def _read_configuration(path: str) -> Any:
    text = read_text(path, "configuration")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}", ExitCode.USAGE
        ) from None
    except RecursionError:
        raise CommandError(f"{path}: nests too deeply", ExitCode.USAGE) from None


def checked_configuration(path: str, out: TextIO | None, consequence: str = "") -> tuple[Any, list[Problem]]:
    """Read the configuration file at `path` and validate it.

    Its problems, if any, are printed on `out` (None: not printed) under a line
    naming the file, their count and the `consequence` (e.g. "; nothing stored").
    """
    configuration = _read_configuration(path)
    problems = validate_configuration(configuration)
    if problems and out is not None:
        print(f"{path}: {len(problems)} problem(s){consequence}", file=out)
        print(problems_table(problems), file=out)
    return configuration, problems


def import_modules(modules: Sequence[str]) -> None:
    """Import the application modules named with ``--import`` (where its tasks,
    runners, storages and managers register themselves)."""
    if not modules:
        return
    # Like ``python -m``: modules of the project in the current directory import.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise CommandError(f"--import {module}: {type(exc).__name__}: {exc}", ExitCode.USAGE) from exc
