"""The workflow of a configuration as a graph, rendered as Mermaid or Graphviz DOT.

Nodes are triggers (fired by the application) and tasks; a task is also the
trigger of its own cascade, so it is drawn once. Edges go from a trigger (or a
task) to the task that uses it, one kind per directive: ``after``, ``andEvery``
and ``unless``; an edge that starts at a task is a cascade. Given a session
snapshot, tasks are coloured by the status of their instances and fired triggers
are marked.

Pure functions over a configuration and an optional `SessionState`: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .config import TaskConfig, parse_configuration
from .instance import Status
from .state import SessionState

__all__ = [
    "Edge",
    "EdgeKind",
    "Node",
    "WorkflowGraph",
    "build_graph",
    "to_dot",
    "to_mermaid",
]


class EdgeKind(StrEnum):
    AFTER = "after"
    AND_EVERY = "andEvery"
    UNLESS = "unless"


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    name: str
    #: "task" or "trigger".
    kind: str
    #: For tasks: the ``run`` name and the runner (``using``), if any.
    run: str | None = None
    using: str | None = None
    #: With a session: the status the node is coloured by (tasks: the most
    #: pressing status of their instances; triggers: "fired"), else None.
    status: str | None = None
    #: With a session, for tasks: status -> number of instances.
    counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    kind: EdgeKind

    @property
    def is_cascade(self) -> bool:
        """The edge starts at a task: it is followed when that task finishes."""
        return self.source.startswith("task")


@dataclass(frozen=True, slots=True)
class WorkflowGraph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


#: A task's colour is the first of its instances' statuses in this order: what
#: needs an operator first, then what is in progress, then what is done.
STATUS_PRIORITY: tuple[Status, ...] = (
    Status.FAILED,
    Status.RUNNING,
    Status.SCHEDULED,
    Status.UNSTARTED,
    Status.FINISHED,
    Status.SKIPPED,
    Status.REPLAYED,
    Status.ABANDONED,
)

#: Fill and border colours per status (and for fired / not-fired triggers).
COLOURS: Mapping[str, tuple[str, str]] = {
    "failed": ("#f8d7da", "#b02a37"),
    "running": ("#cfe2ff", "#0a58ca"),
    "scheduled": ("#e0cffc", "#6f42c1"),
    "unstarted": ("#fff3cd", "#997404"),
    "finished": ("#d1e7dd", "#146c43"),
    "skipped": ("#e2e3e5", "#41464b"),
    "replayed": ("#e2e3e5", "#41464b"),
    "abandoned": ("#f1f1f1", "#8c8c8c"),
    "waiting": ("#ffffff", "#8c8c8c"),
    "fired": ("#d1e7dd", "#146c43"),
}
#: Edges that start at a task (cascades) are drawn in this colour.
CASCADE_COLOUR = "#146c43"


def build_graph(
    configuration: Mapping[str, TaskConfig] | Mapping[str, Mapping[str, Any]],
    state: SessionState | None = None,
) -> WorkflowGraph:
    """The graph of `configuration` (parsed `TaskConfig`s, or raw directives that
    are validated first: `ConfigurationError` if they are bad), coloured by
    `state` if given."""
    tasks = _parsed(configuration)
    task_ids = {name: f"task{i}" for i, name in enumerate(tasks)}
    trigger_names: list[str] = []
    for config in tasks.values():
        for trigger in (*sorted(config.after), *sorted(config.unless)):
            if trigger not in task_ids and trigger not in trigger_names:
                trigger_names.append(trigger)
    trigger_ids = {name: f"trigger{i}" for i, name in enumerate(trigger_names)}

    nodes: list[Node] = []
    for name in trigger_names:
        status = None
        if state is not None:
            status = "fired" if name in state.latest_kwargs else "waiting"
        nodes.append(Node(trigger_ids[name], name, "trigger", status=status))
    for name, config in tasks.items():
        counts: dict[str, int] = {}
        status = None
        if state is not None:
            for instance in state.instances_of_task(name):
                counts[instance.status.value] = counts.get(instance.status.value, 0) + 1
            status = next((s.value for s in STATUS_PRIORITY if s.value in counts), "waiting")
        nodes.append(Node(task_ids[name], name, "task", config.run, config.using, status, counts))

    def node_id(trigger: str) -> str:
        return task_ids.get(trigger) or trigger_ids[trigger]

    edges: list[Edge] = []
    for name, config in tasks.items():
        for trigger in sorted(config.after):
            kind = EdgeKind.AND_EVERY if trigger == config.and_every else EdgeKind.AFTER
            edges.append(Edge(node_id(trigger), task_ids[name], kind))
        for trigger in sorted(config.unless):
            edges.append(Edge(node_id(trigger), task_ids[name], EdgeKind.UNLESS))
    return WorkflowGraph(tuple(nodes), tuple(edges))


def _parsed(
    configuration: Mapping[str, TaskConfig] | Mapping[str, Mapping[str, Any]],
) -> Mapping[str, TaskConfig]:
    if all(isinstance(v, TaskConfig) for v in configuration.values()):
        return configuration  # type: ignore[return-value]
    return parse_configuration(configuration)


def _counts_text(node: Node) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(node.counts.items()))


# -- Mermaid -----------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    # Mermaid labels are quoted strings; entity codes keep quotes and markup literal.
    return text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def to_mermaid(
    configuration: Mapping[str, TaskConfig] | Mapping[str, Mapping[str, Any]],
    state: SessionState | None = None,
    *,
    direction: str = "LR",
) -> str:
    """A Mermaid flowchart of the workflow (paste it in a ```` ```mermaid ```` block).

    Triggers are rounded, tasks are boxes showing their ``run`` name; ``andEvery``
    edges are thick (``==>``), ``unless`` edges dotted red (``-.->``), cascades
    (edges from a task) green. With `state`,
    nodes get a class per status (``failed``, ``finished``...).
    """
    graph = build_graph(configuration, state)
    lines = [f"flowchart {direction}"]
    for node in graph.nodes:
        if node.kind == "trigger":
            lines.append(f'    {node.id}(["{_mermaid_text(node.name)}"])')
            continue
        label = f"<b>{_mermaid_text(node.name)}</b><br/>run: {_mermaid_text(node.run or '')}"
        if node.using:
            label += f"<br/>using: {_mermaid_text(node.using)}"
        if node.counts:
            label += f"<br/><i>{_mermaid_text(_counts_text(node))}</i>"
        lines.append(f'    {node.id}["{label}"]')
    for edge in graph.edges:
        if edge.kind is EdgeKind.AND_EVERY:
            lines.append(f"    {edge.source} ==>|every| {edge.target}")
        elif edge.kind is EdgeKind.UNLESS:
            lines.append(f"    {edge.source} -.->|unless| {edge.target}")
        else:
            lines.append(f"    {edge.source} --> {edge.target}")
    unless = [str(i) for i, e in enumerate(graph.edges) if e.kind is EdgeKind.UNLESS]
    if unless:
        lines.append(f"    linkStyle {','.join(unless)} stroke:{COLOURS['failed'][1]}")
    cascades = [str(i) for i, e in enumerate(graph.edges) if e.is_cascade and e.kind is not EdgeKind.UNLESS]
    if cascades:
        lines.append(f"    linkStyle {','.join(cascades)} stroke:{CASCADE_COLOUR}")
    used = sorted({n.status for n in graph.nodes if n.status})
    for status in used:
        fill, stroke = COLOURS[status]
        lines.append(f"    classDef {status} fill:{fill},stroke:{stroke}")
    for status in used:
        ids = ",".join(n.id for n in graph.nodes if n.status == status)
        lines.append(f"    class {ids} {status}")
    return "\n".join(lines) + "\n"


# -- Graphviz DOT --------------------------------------------------------------------------


def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(
    configuration: Mapping[str, TaskConfig] | Mapping[str, Mapping[str, Any]],
    state: SessionState | None = None,
    *,
    name: str = "workflow",
) -> str:
    """A Graphviz DOT digraph of the workflow (``dot -Tpng``).

    Triggers are ellipses, tasks rounded boxes; ``andEvery`` edges are bold and
    labelled "every", ``unless`` edges dashed red with a tee head, cascades
    (edges from a task) green. With `state`,
    nodes are filled by status.
    """
    graph = build_graph(configuration, state)
    lines = [
        f"digraph {_dot_text(name)} {{",
        "    rankdir=LR;",
        '    node [fontname="Helvetica", fontsize=11];',
        '    edge [fontname="Helvetica", fontsize=9];',
    ]
    for node in graph.nodes:
        attrs: dict[str, str] = {}
        if node.kind == "trigger":
            attrs["shape"] = "ellipse"
            attrs["label"] = _dot_text(node.name)
        else:
            label = f"{node.name}\nrun: {node.run}"
            if node.using:
                label += f"\nusing: {node.using}"
            if node.counts:
                label += f"\n{_counts_text(node)}"
            attrs["shape"] = "box"
            attrs["label"] = _dot_text(label)
        styles = ["rounded"] if node.kind == "task" else []
        if node.status:
            fill, stroke = COLOURS[node.status]
            styles.append("filled")
            attrs["fillcolor"] = _dot_text(fill)
            attrs["color"] = _dot_text(stroke)
            attrs["tooltip"] = _dot_text(node.status)
        if styles:
            attrs["style"] = _dot_text(",".join(styles))
        lines.append(f"    {node.id} [{', '.join(f'{k}={v}' for k, v in attrs.items())}];")
    for edge in graph.edges:
        if edge.kind is EdgeKind.AND_EVERY:
            attrs = {"style": "bold", "label": '"every"'}
        elif edge.kind is EdgeKind.UNLESS:
            attrs = {
                "style": "dashed",
                "color": _dot_text(COLOURS["failed"][1]),
                "arrowhead": "tee",
                "label": '"unless"',
            }
        else:
            attrs = {}
        if edge.is_cascade and edge.kind is not EdgeKind.UNLESS:
            attrs["color"] = _dot_text(CASCADE_COLOUR)
        suffix = f" [{', '.join(f'{k}={v}' for k, v in attrs.items())}]" if attrs else ""
        lines.append(f"    {edge.source} -> {edge.target}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"
