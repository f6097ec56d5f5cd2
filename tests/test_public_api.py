"""The names SPEC.md pins are importable from where it says."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

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
    # Bad arguments: caught as either builtin kind.
    assert issubclass(atriggers.InvalidInput, ValueError) and issubclass(atriggers.InvalidInput, TypeError)


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


def _public_modules() -> list[str]:
    names = ["atriggers"]
    for info in pkgutil.walk_packages(atriggers.__path__, "atriggers."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


PUBLIC_MODULES = _public_modules()


def test_every_public_module_is_walked() -> None:
    assert {"atriggers.storage.sqlite", "atriggers.runners.celery", "atriggers.testing.conformance"} <= set(
        PUBLIC_MODULES
    )
    assert not any(name.split(".")[-1].startswith("_") for name in PUBLIC_MODULES)


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_all_is_exact(module: str) -> None:
    """What ``__all__`` lists exists, and every public class or function the
    module defines is in ``__all__`` (else it is private: a leading underscore)."""
    mod = importlib.import_module(module)
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"{module} has no __all__"
    missing = [name for name in exported if not hasattr(mod, name)]
    assert not missing, f"{module}.__all__ lists names it lacks: {missing}"
    assert len(set(exported)) == len(exported), f"{module}.__all__ repeats names"
    defined_here = [
        name
        for name, value in vars(mod).items()
        if not name.startswith(("_", "pytest_"))  # pytest hooks are found by name
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module
    ]
    unexported = sorted(set(defined_here) - set(exported))
    assert not unexported, f"{module} defines public names missing from __all__: {unexported}"


def test_one_source_for_the_version() -> None:
    from importlib.metadata import version

    assert version("atriggers") == atriggers.__version__


def test_stored_exception_names_are_pinned() -> None:
    """Failed instances store ``module.QualName`` of their exception: moving a
    class must not change it."""
    from atriggers import errors
    from atriggers.runners import aws_lambda, celery

    for name in errors.__all__:
        value = getattr(errors, name)
        if inspect.isclass(value) and issubclass(value, BaseException):
            assert value.__module__ == "atriggers.errors", name
    assert celery.CeleryDispatchError.__module__ == "atriggers.runners.celery"
    assert aws_lambda.LambdaInvokeError.__module__ == "atriggers.runners.aws_lambda"
    assert issubclass(celery.CeleryDispatchError, errors.DispatchError)
    assert issubclass(aws_lambda.LambdaInvokeError, errors.DispatchError)
