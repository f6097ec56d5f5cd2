"""Workflow graphs: structure, Mermaid and DOT output, colouring by session."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from atriggers import ConfigurationError, TaskContext, TriggerManager, parse_configuration
from atriggers.graph import build_graph, to_dot, to_mermaid
from atriggers.storage import SQLiteStorage
from atriggers.tasks import TaskRegistry

CONFIG: dict[str, dict[str, Any]] = {
    "t_importSubject": {
        "after": ["firstPageReceived", "questionnaireComplete"],
        "run": "q.import_subject",
    },
    "t_importResponses": {
        "after": ["t_importSubject"],
        "andEvery": "pageReceived",
        "run": "q.import_responses",
    },
    "t_importBrowserMetadata": {
        "after": ["t_importSubject", "pageReceived"],
        "unless": ["isEmbeddedApplication"],
        "run": "q.import_browser_metadata",
        "using": "celery",
    },
}


def edges(config: dict[str, dict[str, Any]]) -> set[tuple[str, str, str, bool]]:
    graph = build_graph(config)
    names = {n.id: n.name for n in graph.nodes}
    return {(names[e.source], names[e.target], e.kind.value, e.is_cascade) for e in graph.edges}


def test_nodes_and_edges_per_directive() -> None:
    graph = build_graph(CONFIG)
    kinds = {n.name: n.kind for n in graph.nodes}
    assert kinds == {
        "firstPageReceived": "trigger",
        "questionnaireComplete": "trigger",
        "pageReceived": "trigger",
        "isEmbeddedApplication": "trigger",
        "t_importSubject": "task",
        "t_importResponses": "task",
        "t_importBrowserMetadata": "task",
    }
    assert graph.node("t_importBrowserMetadata").using == "celery"
    assert edges(CONFIG) == {
        ("firstPageReceived", "t_importSubject", "after", False),
        ("questionnaireComplete", "t_importSubject", "after", False),
        ("pageReceived", "t_importResponses", "andEvery", False),
        ("t_importSubject", "t_importResponses", "after", True),
        ("pageReceived", "t_importBrowserMetadata", "after", False),
        ("t_importSubject", "t_importBrowserMetadata", "after", True),
        ("isEmbeddedApplication", "t_importBrowserMetadata", "unless", False),
    }
    assert all(n.status is None for n in graph.nodes)


def test_cascades_through_andevery_and_unless() -> None:
    config = {
        "t_a": {"after": ["go"], "run": "a"},
        "t_b": {"after": [], "andEvery": "t_a", "run": "b"},
        "t_c": {"after": ["go"], "unless": ["t_b"], "run": "c"},
    }
    assert edges(config) == {
        ("go", "t_a", "after", False),
        ("t_a", "t_b", "andEvery", True),
        ("go", "t_c", "after", False),
        ("t_b", "t_c", "unless", True),
    }


def test_accepts_parsed_configuration_and_rejects_bad_one() -> None:
    assert build_graph(parse_configuration(CONFIG)) == build_graph(CONFIG)
    with pytest.raises(ConfigurationError) as info:
        build_graph({"t_a": {"after": "go", "run": "a"}})
    assert info.value.directive == "after"


def test_mermaid() -> None:
    text = to_mermaid(CONFIG)
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert '    trigger0(["firstPageReceived"])' in lines
    assert (
        '    task2["<b>t_importBrowserMetadata</b><br/>run: q.import_browser_metadata<br/>using: celery"]'
    ) in lines
    assert "    trigger2 ==>|every| task1" in lines
    assert "    trigger3 -.->|unless| task2" in lines
    assert "    task0 --> task1" in lines
    assert "classDef" not in text  # no session, no colours


def test_labels_are_escaped() -> None:
    config = {'t_"quoted"': {"after": ['say "hi" <b>'], "run": "a&b"}}
    mermaid = to_mermaid(config)
    assert '(["say #quot;hi#quot; #lt;b#gt;"])' in mermaid
    assert "run: a#amp;b" in mermaid
    dot = to_dot(config)
    assert r'label="say \"hi\" <b>"' in dot


def test_dot() -> None:
    text = to_dot(CONFIG)
    assert text.startswith('digraph "workflow" {\n    rankdir=LR;')
    assert '    trigger0 [shape=ellipse, label="firstPageReceived"];' in text
    assert '    trigger2 -> task1 [style=bold, label="every"];' in text
    assert '    trigger3 -> task2 [style=dashed, color="#b02a37", arrowhead=tee, label="unless"];' in text
    assert '    task0 -> task1 [color="#146c43"];' in text
    assert text.rstrip().endswith("}")


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz (dot) not installed")
def test_dot_renders_with_graphviz(tmp_path: Path) -> None:
    svg = subprocess.run(
        ["dot", "-Tsvg"],
        input=to_dot(CONFIG),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "t_importBrowserMetadata" in svg and "isEmbeddedApplication" in svg


async def test_session_colours_nodes_by_status(tmp_path: Path) -> None:
    tasks = TaskRegistry(entry_point_group=None)

    async def ok(context: TaskContext) -> dict[str, Any]:
        return {"ok": True}

    async def boom(context: TaskContext) -> None:
        raise ValueError("boom")

    tasks.register(ok, "q.import_subject")
    tasks.register(boom, "q.import_responses")
    config = {k: {**v, "using": None} for k, v in CONFIG.items()}
    async with SQLiteStorage(tmp_path / "graph.db") as storage:
        manager = TriggerManager(storage, "s1", tasks=tasks)
        await manager.update_configuration(config)
        await manager.fire("isEmbeddedApplication")
        await manager.fire("firstPageReceived")
        await manager.fire("questionnaireComplete")
        await manager.fire("pageReceived")
        await manager.fire("pageReceived")
        await manager.join()
        state = await manager.get_state()

    graph = build_graph(state.tasks, state)
    status = {n.name: n.status for n in graph.nodes}
    assert status == {
        "firstPageReceived": "fired",
        "questionnaireComplete": "fired",
        "pageReceived": "fired",
        "isEmbeddedApplication": "fired",
        "t_importSubject": "finished",
        "t_importResponses": "failed",
        "t_importBrowserMetadata": "abandoned",
    }
    assert graph.node("t_importResponses").counts == {"failed": 2}

    mermaid = to_mermaid(state.tasks, state)
    assert "<i>2 failed</i>" in mermaid
    assert "    classDef failed fill:#f8d7da,stroke:#b02a37" in mermaid
    assert "    class task1 failed" in mermaid
    assert "    class task0 finished" in mermaid
    dot = to_dot(state.tasks, state)
    assert 'fillcolor="#f8d7da"' in dot and 'tooltip="abandoned"' in dot


def test_waiting_nodes_before_anything_fired() -> None:
    from atriggers import SessionState

    state = SessionState(uid="empty", tasks=parse_configuration(CONFIG))
    graph = build_graph(state.tasks, state)
    assert {n.status for n in graph.nodes} == {"waiting"}
