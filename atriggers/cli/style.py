"""Tables, colour and progress bars from rich (the ``cli`` extra), when the
output is a terminal; plain text otherwise, or when rich is not installed.

rich is imported only when a terminal will show what it draws, so scripts,
pipes and ``--json`` never pay for it and never need it.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["STATUS_STYLES", "active", "progress", "rich_table"]

#: How statuses and explanation codes are coloured.
STATUS_STYLES = {
    "finished": "green",
    "skipped": "cyan",
    "replayed": "cyan",
    "failed": "bold red",
    "lost": "bold red",
    "abandoned": "yellow",
    "expired": "yellow",
    "running": "blue",
    "scheduled": "blue",
    "waiting": "magenta",
    "unstarted": "magenta",
    "never-triggered": "dim",
    "refused": "bold red",
    "repaired": "green",
}


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def active(out: TextIO | None = None) -> bool:
    """Draw with rich: `out` (default stdout) is a terminal and rich is installed."""
    out = out or sys.stdout
    try:
        terminal = out.isatty()
    except (AttributeError, ValueError):
        return False
    return terminal and os.environ.get("TERM") != "dumb" and _rich_available()


def rich_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """The rows as a rich table, rendered to text with colour codes."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*header, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        table.add_row(*(_cell(c, Text) for c in row))
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=shutil.get_terminal_size().columns)
    console.print(table)
    return buffer.getvalue().rstrip("\n")


def _cell(text: str, make: Any) -> Any:
    # A status, possibly followed by a remark: "running (OVERDUE)".
    style = STATUS_STYLES.get(text.split(" ", 1)[0])
    return make(text, style=style or "")


@contextmanager
def progress(total: int, description: str, out: TextIO | None = None) -> Iterator[Callable[[int], None]]:
    """A progress bar (rich's) while the block runs, on a terminal only;
    yields ``advance(n)``."""
    if not active(out or sys.stderr):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=out or sys.stderr),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
