"""The Python examples of docs/web.md run as written."""

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from webserve import serve

from atriggers import Status

DOC = Path(__file__).resolve().parents[2] / "docs" / "web.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": f"doc_example_{index}"}
    exec(compile(BLOCKS[index], f"{DOC}:block{index}", "exec"), namespace)


async def test_quick_start_serves_orders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "doc_quick_start"}
    exec(compile(BLOCKS[0], f"{DOC}:quick-start", "exec"), namespace)
    triggers = namespace["triggers"]
    async with serve(namespace["app"]) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/orders/o1")).json() == {"order": "o1"}
        paid = await client.post("/orders/o1/paid", json={"email": "ada@example.com"})
        assert paid.json() == {"scheduled": []}
        shipped = await client.post("/orders/o1/shipped")
        assert shipped.json() == {"scheduled": ["t_receipt#0"]}
        manager = triggers.manager("o1")
        await manager.storage.drain(5)
        instance = await manager.get_instance("t_receipt#0")
        assert instance.status is Status.FINISHED
        assert instance.result == {"sentTo": "ada@example.com"}
    assert (tmp_path / "shop.db").exists()
