"""The Python examples in docs/*.md run as written (each page in order, in one namespace)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES_WITH_CODE = ["python_api.md", "volumes.md", "wearables.md"]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_doc_examples_run(page: str, tmp_path: Path) -> None:
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no python examples"
    namespace: dict[str, object] = {"__name__": "__docs__"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for number, block in enumerate(blocks, start=1):
            exec(compile(block, f"{page}[block {number}]", "exec"), namespace)
    finally:
        os.chdir(cwd)


def test_every_page_with_python_is_executed() -> None:
    pages = sorted(p.name for p in DOCS.glob("*.md") if python_blocks(p))
    assert pages == sorted(PAGES_WITH_CODE)
