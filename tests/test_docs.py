"""Every Python block of README.md and docs/ marked ``<!-- runnable -->`` (on the
line before its fence) runs as written, each in a fresh process and a fresh
directory: top-level ``await`` is allowed, and a block defining tests is run with
pytest. What the docs show cannot drift from what the code does."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- runnable -->"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# Runs a block: top-level await allowed (as in the asyncio REPL), so that
# `async with open_storage(...)` snippets run as they read.
RUNNER = """
import ast, asyncio, sys
source = open(sys.argv[1], encoding="utf-8").read()
code = compile(source, sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks() -> tuple[list[Block], int]:
    marked: list[Block] = []
    total = 0
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            total += 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            if before.strip() == MARK:
                marked.append(Block(path, text.count("\n", 0, match.start()) + 1, match.group(1)))
    return marked, total


BLOCKS, TOTAL = _blocks()


def test_most_python_blocks_are_checked() -> None:
    assert len(BLOCKS) >= TOTAL // 2, f"only {len(BLOCKS)} of {TOTAL} Python blocks are marked runnable"


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_the_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    if "def test_" in block.code:
        (tmp_path / "pytest.ini").write_text(
            "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        )
        (tmp_path / "test_block.py").write_text(block.code, encoding="utf-8")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    else:
        (tmp_path / "block.py").write_text(block.code, encoding="utf-8")
        command = [sys.executable, "-c", RUNNER, "block.py"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{block} failed:\n{done.stdout}\n{done.stderr}"
