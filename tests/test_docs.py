"""The examples in docs/ run, so they cannot rot; and the index lists every page.

Convention: a ```python block whose fence is directly preceded by the line ``<!-- run -->`` is run
(the marker is an HTML comment, invisible in the rendered page). The marked blocks of one page run in
order in one namespace, as a reader would paste them; a block with top-level ``await`` runs in an
event loop of its own, a block may also call ``asyncio.run`` itself. Examples take the broker and
domain from ``KARABO_BROKER`` and ``KARABO_DOMAIN``, which each test sets: once to the in-process
broker (``memory://``) and once to the suite's RabbitMQ, so each page is proven on both backends.
Unmarked blocks (and pages with runners of their own, like tests/test_schema.py for schema.md) are
left alone.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
import types
import uuid
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"
MARKER = "<!-- run -->"
_BLOCK = re.compile(
    r"^" + re.escape(MARKER) + r"[ \t]*\n```python[ \t]*\n(.*?)^```", re.DOTALL | re.MULTILINE
)

# Pages whose examples this suite owns: each must keep at least one marked block.
OWN_PAGES = ("protocol.md", "messaging.md", "topology.md", "architecture.md")


def marked_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every marked python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def pages_with_examples() -> list[str]:
    return sorted(p.name for p in DOCS.glob("*.md") if marked_blocks(p.read_text()))


def run_page(name: str) -> None:
    """Run a page's marked blocks in order, in one module namespace."""
    path = DOCS / name
    module = types.ModuleType(f"docs_{path.stem.replace('-', '_')}")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # so that annotations and dataclasses resolve as in a file
    try:
        for line, code in marked_blocks(path.read_text()):
            # Line numbers in tracebacks point into the markdown file.
            source = "\n" * (line - 1) + code
            compiled = compile(source, str(path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(compiled, module.__dict__)  # our own documentation, run as its reader would
            if inspect.isawaitable(result):
                asyncio.run(_await(result))
    finally:
        del sys.modules[module.__name__]


async def _await(awaitable: object) -> None:
    await awaitable  # type: ignore[misc]


@pytest.fixture(params=["memory", "amqp"])
def docs_env(request: pytest.FixtureRequest, domain: str, monkeypatch: pytest.MonkeyPatch) -> str:
    # domain before monkeypatch: its clean-up (deleting exchanges) must see the real KARABO_BROKER
    if request.param == "memory":
        monkeypatch.setenv("KARABO_BROKER", f"memory://docs-{uuid.uuid4().hex}")
    else:
        monkeypatch.setenv("KARABO_BROKER", str(request.getfixturevalue("broker_url")))
    monkeypatch.setenv("KARABO_DOMAIN", domain)
    return str(request.param)


@pytest.mark.parametrize("page", pages_with_examples())
def test_docs_examples_run(page: str, docs_env: str) -> None:
    run_page(page)


@pytest.mark.parametrize("page", OWN_PAGES)
def test_own_pages_have_runnable_examples(page: str) -> None:
    assert marked_blocks((DOCS / page).read_text()), f"docs/{page} has no block marked {MARKER}"


def test_marker_finds_only_marked_blocks() -> None:
    text = f"x\n```python\nnot_run()\n```\n{MARKER}\n```python\nrun_me()\n```\n\n{MARKER}\n\n```python\nno()\n```\n"
    assert marked_blocks(text) == [(7, "run_me()\n")]


def test_index_links_every_page() -> None:
    index = (DOCS / "index.md").read_text()
    linked = set(re.findall(r"\]\(([\w.-]+\.md)(?:#[\w-]*)?\)", index))
    missing = sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md" and p.name not in linked)
    assert not missing, f"docs/index.md does not link {missing}"


@pytest.mark.parametrize("page", [*OWN_PAGES, "index.md"])
def test_links_of_own_pages_resolve(page: str) -> None:
    """Relative links between pages point at pages that exist, or that the index announces."""
    text = (DOCS / page).read_text()
    announced = set(re.findall(r"\]\(([\w.-]+\.md)\)", (DOCS / "index.md").read_text()))
    for target in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]*)?\)", text):
        if target.startswith("../"):
            assert (DOCS / target).resolve().exists(), f"docs/{page} links missing {target}"
        else:
            assert (DOCS / target).exists() or target in announced, f"docs/{page} links unknown {target}"
