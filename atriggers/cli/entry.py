"""Running the ``atriggers`` command: parse, import, dispatch, map errors to exit codes."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import TriggerError
from .exits import CommandError, exit_code_for
from .inputs import import_modules
from .parser import build_parser

__all__ = ["console_main", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: ``sys.argv[1:]``); returns the exit code.

    Never raises `SystemExit`: ``--help``, ``--version`` and usage errors return
    their code too, so `main` can be called from Python like any function.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    handler = args.handler
    try:
        import_modules(args.imports)
        code = asyncio.run(handler(args)) if inspect.iscoroutinefunction(handler) else handler(args)
    except CommandError as exc:
        print(f"atriggers: error: {exc}", file=sys.stderr)
        return int(exc.code)
    except TriggerError as exc:
        print(f"atriggers: error: {exc}", file=sys.stderr)
        return int(exit_code_for(exc))
    except KeyboardInterrupt:
        print("atriggers: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, like other tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(code)


def console_main() -> NoReturn:
    """Entry point of the ``atriggers`` console script."""
    sys.exit(main())
