"""The names SPEC.md pins are importable from where it says."""

from __future__ import annotations

import importlib

import pytest

import atriggers

CONTRACT = {
    "atriggers": [
        "TriggerManager",
        "TaskConfig",
        "TaskInstance",
        "TaskContext",
        "Status",
        "SessionState",
        "task",
        "with_context",
        "TriggerError",
        "ConfigurationError",
        "ConcurrencyError",
        "MaxRetriesExceeded",
    ],
    "atriggers.storage": ["MemoryStorage", "SQLiteStorage", "open_storage"],
    "atriggers.runners": ["BaseRunner", "AsyncioRunner", "register_runner", "get_runner"],
}


@pytest.mark.parametrize("module", sorted(CONTRACT))
def test_contract_names_are_exported(module: str) -> None:
    mod = importlib.import_module(module)
    for name in CONTRACT[module]:
        assert name in mod.__all__, name
        assert getattr(mod, name) is not None


@pytest.mark.parametrize("module", ["atriggers", "atriggers.storage", "atriggers.runners"])
def test_all_matches_module_contents(module: str) -> None:
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ lists missing {name}"


def test_errors_share_one_root_and_builtin_bases() -> None:
    assert issubclass(atriggers.ConfigurationError, ValueError)
    for name in (
        "ConfigurationError",
        "ConcurrencyError",
        "MaxRetriesExceeded",
        "InstanceNotFound",
        "InvalidStatus",
        "InvalidInput",
        "StorageError",
        "UnknownRunner",
        "UnknownTask",
    ):
        assert issubclass(getattr(atriggers, name), atriggers.TriggerError), name
    assert issubclass(atriggers.InstanceNotFound, KeyError)
    assert issubclass(atriggers.InvalidStatus, ValueError)


def test_status_is_a_str_enum() -> None:
    assert atriggers.Status("finished") is atriggers.Status.FINISHED
    assert isinstance(atriggers.Status.FAILED, str)
    assert [s.value for s in atriggers.Status] == [
        "unstarted",
        "scheduled",
        "running",
        "finished",
        "failed",
        "abandoned",
        "replayed",
        "skipped",
    ]


def test_core_import_does_not_import_optional_extras() -> None:
    import subprocess
    import sys

    code = (
        "import sys, atriggers, atriggers.storage, atriggers.runners\n"
        "bad = [m for m in ('celery', 'redis', 'botocore', 'aiobotocore', 'fastapi', 'starlette')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_is_typed() -> None:
    from pathlib import Path

    assert (Path(atriggers.__file__).parent / "py.typed").exists()
