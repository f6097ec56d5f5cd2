"""What the ``atriggers`` command's exit status means, and which error gets which."""

from __future__ import annotations

from enum import IntEnum

from ..errors import (
    ConcurrencyError,
    ConfigurationError,
    InstanceNotFound,
    InvalidInput,
    InvalidStatus,
    StorageError,
    TriggerError,
    UnknownManager,
    UnknownRunner,
    UnknownStorage,
)

__all__ = ["CommandError", "ExitCode", "exit_code_for"]


class ExitCode(IntEnum):
    """What the ``atriggers`` command's exit status means."""

    OK = 0
    #: The configuration is invalid (``validate``, ``configure``, ``graph``), or
    #: ``schema --check`` found the file out of date.
    INVALID = 1
    #: Bad command line: unknown option, bad JSON argument or file, unknown
    #: storage scheme, runner or manager, a module that cannot be imported.
    USAGE = 2
    #: No such database, session or instance.
    NOT_FOUND = 3
    #: The instance is not in a status that allows the operation (e.g. replaying
    #: an instance that did not fail).
    WRONG_STATUS = 4
    #: The storage failed, or concurrent writers kept the operation from landing.
    STORAGE = 5
    #: The operation was stored, but an instance run by this process failed.
    TASK_FAILED = 6


class CommandError(Exception):
    """A failure to report on stderr with its exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


# First match wins: the order matters where a class has several bases.
_ERROR_CODES: tuple[tuple[type[TriggerError], ExitCode], ...] = (
    (ConfigurationError, ExitCode.INVALID),
    (InstanceNotFound, ExitCode.NOT_FOUND),
    (InvalidStatus, ExitCode.WRONG_STATUS),
    (InvalidInput, ExitCode.USAGE),
    (UnknownRunner, ExitCode.USAGE),
    (UnknownManager, ExitCode.USAGE),
    (UnknownStorage, ExitCode.USAGE),
    (StorageError, ExitCode.STORAGE),
    (ConcurrencyError, ExitCode.STORAGE),
)


def exit_code_for(error: TriggerError) -> ExitCode:
    """The exit code of a library error that reached the command unhandled."""
    return next((code for cls, code in _ERROR_CODES if isinstance(error, cls)), ExitCode.STORAGE)
