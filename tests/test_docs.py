"""The Python examples in docs/*.md run as written (each page in order, in one namespace)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES_WITH_CODE = ["python_api.md", "volumes.md", "wearables.md", "xray.md"]
#: pages whose examples read ``../shared/data`` (relative to the repository root, as a user runs them)
PAGES_ON_SHARED_DATA = {"xray.md"}


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_doc_examples_run(page: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no python examples"
    workdir = tmp_path
    if page in PAGES_ON_SHARED_DATA:
        shared: Path = request.getfixturevalue("shared_data")  # skips, saying why, when absent
        # run in a folder whose ../shared/data is the real one, as in a checkout next to shared/
        workdir = tmp_path / "repo"
        workdir.mkdir()
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "data").symlink_to(shared.resolve(), target_is_directory=True)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for number, block in enumerate(blocks, start=1):
            exec(compile(block, f"{page}[block {number}]", "exec"), namespace)
    finally:
        os.chdir(cwd)


def test_every_page_with_python_is_executed() -> None:
    pages = sorted(p.name for p in DOCS.glob("*.md") if python_blocks(p))
    assert pages == sorted(PAGES_WITH_CODE)
