"""The workflow graph of a session, coloured by status, visible without internet:
Graphviz's ``dot -Tsvg`` when it is installed (served as an image, so nothing in
it can run), else columns of coloured boxes laid out here and drawn as HTML."""

from __future__ import annotations

import asyncio
import shutil
from collections import OrderedDict
from dataclasses import dataclass

from ...graph import Node, WorkflowGraph, build_graph, to_dot
from ...state import SessionState

__all__ = ["Columns", "GraphRenderer", "columns"]


@dataclass(frozen=True, slots=True)
class Columns:
    """The fallback drawing: nodes in columns (a node sits right of everything
    that leads to it), and every edge as ``(source name, target name, kind)``."""

    columns: tuple[tuple[Node, ...], ...]
    edges: tuple[tuple[str, str, str], ...]


def columns(graph: WorkflowGraph) -> Columns:
    """Lay `graph` out in columns by longest path from a source (cycles, which
    cascades can make, are cut where they close)."""
    incoming: dict[str, list[str]] = {n.id: [] for n in graph.nodes}
    for edge in graph.edges:
        incoming[edge.target].append(edge.source)
    rank: dict[str, int] = {}

    def depth(node: str, path: frozenset[str]) -> int:
        if node in rank:
            return rank[node]
        sources = [s for s in incoming[node] if s not in path]
        rank[node] = 1 + max((depth(s, path | {node}) for s in sources), default=-1)
        return rank[node]

    for node in graph.nodes:
        depth(node.id, frozenset())
    width = max(rank.values(), default=-1) + 1
    laid: list[list[Node]] = [[] for _ in range(width)]
    for node in graph.nodes:
        laid[rank[node.id]].append(node)
    names = {n.id: n.name for n in graph.nodes}
    edges = tuple((names[e.source], names[e.target], e.kind.value) for e in graph.edges)
    return Columns(tuple(tuple(c) for c in laid), edges)


class GraphRenderer:
    """Renders sessions' graphs, remembering the last few (by uid and version)."""

    def __init__(self, dot: str | None = "dot", timeout: float = 10.0, remember: int = 64) -> None:
        self.dot = shutil.which(dot) if dot else None
        self.timeout = timeout
        self._svgs: OrderedDict[tuple[str, int], bytes | None] = OrderedDict()
        self._remember = remember

    @property
    def has_dot(self) -> bool:
        return self.dot is not None

    async def svg(self, state: SessionState) -> bytes | None:
        """The graph as SVG, or None when Graphviz is missing or failed."""
        if self.dot is None:
            return None
        key = (state.uid, state.version)
        if key in self._svgs:
            self._svgs.move_to_end(key)
            return self._svgs[key]
        svg = await self._run(to_dot(state.tasks, state, name=state.uid).encode())
        self._svgs[key] = svg
        if len(self._svgs) > self._remember:
            self._svgs.popitem(last=False)
        return svg

    async def _run(self, source: bytes) -> bytes | None:
        assert self.dot is not None
        process = await asyncio.create_subprocess_exec(
            self.dot,
            "-Tsvg",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(source), self.timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            return None
        return out if process.returncode == 0 else None

    @staticmethod
    def columns(state: SessionState) -> Columns:
        return columns(build_graph(state.tasks, state))
