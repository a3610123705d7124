"""The fenced blocks of README.md and docs/*.md, as the doc tests read them.

Two kinds of block are checked, by two tests:

- a block after ``<!-- example: run -->`` is Python that runs verbatim, and one after
  ``<!-- example: file NAME -->`` is a file the run examples import or read
  (``test_api.test_doc_examples_run_verbatim``: they train for real, on tiny data);
- every line of a ``bash`` block is a command whose program exists and whose arguments are
  accepted (``test_doc_commands``: Hydra overrides composed and checked as the command itself
  checks them, before torch loads; a script's ``--flags`` are ones it defines).

A ``bash`` block is not executed: its commands are full training runs, sweeps, the codec on a
whole database or benchmarks on the shared databases (minutes each), and the end-to-end tests
run each kind on tiny data (``test_train_e2e``, ``test_sweeps``, ``test_codec_e2e``,
``test_wheel``). Blocks with no language are program output and are not checked.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

EXAMPLE = re.compile(r"<!-- example: (run|file (\S+)) -->\n```\w*\n(.*?)```", re.S)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
#: a placeholder the docs write for a run's own folder: <ts> -> a real timestamp's form
PLACEHOLDERS = {"<ts>": "2026-12-02_14-43-00"}


def examples() -> list[tuple[str, str, str | None, str]]:
    """(doc, kind, file name, code) of every marked block, README first, in order."""
    return [
        (doc.name, "file" if name else "run", name or None, code)
        for doc in DOCS
        for _, name, code in EXAMPLE.findall(doc.read_text())
    ]


def commands() -> list[tuple[str, list[str]]]:
    """(doc, argv) of every command in the docs' ``bash`` blocks: continued lines joined,
    comments dropped, ``a && b`` split, placeholders filled in."""
    out = []
    for doc in DOCS:
        for lang, body in FENCE.findall(doc.read_text()):
            if lang != "bash":
                continue
            for line in body.replace("\\\n", " ").splitlines():
                for part in _split_and(line):
                    out.append((doc.name, part))
    return out


def _split_and(line: str) -> list[list[str]]:
    for key, value in PLACEHOLDERS.items():
        line = line.replace(key, value)
    words, parts = shlex.split(line, comments=True), [[]]
    for word in words:
        if word == "&&":
            parts.append([])
        else:
            parts[-1].append(word)
    return [p for p in parts if p]
