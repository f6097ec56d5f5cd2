"""The ``atriggers`` command: check configurations, inspect and repair sessions.

Works over any storage URL `open_storage` understands. Exit codes are distinct
per kind of failure (see `ExitCode`) so scripts can tell them apart.

Modules: `parser` (the command line), `commands` (one function per
subcommand), `inputs` (files, JSON arguments, ``--import``), `session`
(storage, session and manager lookup), `render` (tables and JSON), `exits`
(exit codes and which error gets which), `entry` (`main`).
"""

from .entry import console_main, main
from .exits import CommandError, ExitCode
from .parser import build_parser

__all__ = ["CommandError", "ExitCode", "build_parser", "console_main", "main"]
