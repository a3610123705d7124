"""Every relative link and image in README.md and docs/*.md points at a file that exists, every
``#anchor`` at a heading of that file (GitHub's anchor rule), and every figure is one that
``scripts/make_figures.py`` makes from real runs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from doc_blocks import DOCS, FENCE, REPO

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation but ``-`` and ``_`` dropped, spaces
    as ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of ``path``'s headings (outside code blocks)."""
    text = FENCE.sub("", path.read_text())
    return {anchor(h) for h in HEADING.findall(text)}


def links() -> list[tuple[str, str]]:
    """(doc, target) of every relative link, outside code blocks."""
    return [
        (doc.name, target)
        for doc in DOCS
        for target in LINK.findall(FENCE.sub("", doc.read_text()))
        if not re.match(r"[a-z]+:", target)
    ]


def test_anchor_rule():
    assert anchor("Configs read from files: the registry of `_target_`s") == (
        "configs-read-from-files-the-registry-of-_target_s"
    )
    assert anchor("What train() returns") == "what-train-returns"


@pytest.mark.parametrize(("doc", "target"), links())
def test_link_resolves(doc, target):
    base = REPO if doc == "README.md" else REPO / "docs"
    path, _, fragment = target.partition("#")
    file = (base / path).resolve() if path else base / doc
    assert file.is_file(), f"{doc}: {target}: no file {file}"
    if fragment:
        assert fragment in anchors(file), f"{doc}: {target}: no heading #{fragment}"


def test_every_figure_is_made_by_make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", REPO / "scripts/make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    made = {f"docs/{name}" for _, figures, _ in module.RUNS for name in figures.values()}
    shown = {
        str(((REPO if doc == "README.md" else REPO / "docs") / t).resolve().relative_to(REPO))
        for doc, t in links()
        if t.endswith(".png")
    }
    assert shown and shown <= made, shown - made
