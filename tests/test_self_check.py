"""The seed's self-check (``python -m meaning_transform.test_training``): its checks, in process.

tests/test_wheel.py runs the module itself from an installed wheel and reads its output with
``assert_self_check_output``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meaning_transform.test_training import run_checks

pytestmark = pytest.mark.slow

CHECKS = ["fit", "outputs", "resume", "reload"]


def assert_self_check_output(stdout: str, stderr: str) -> None:
    """One ``ok <check> ...`` line per check, then ``all checks passed``, nothing on stderr."""
    lines = stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [["ok", name] for name in CHECKS], stdout
    assert lines[-1] == "all checks passed" and not stderr.strip(), stdout + stderr[-3000:]


def test_self_check_passes_one_line_per_check(tmp_path: Path) -> None:
    lines: list[str] = []
    assert run_checks(tmp_path, say=lines.append)
    assert_self_check_output("\n".join([*lines, "all checks passed"]), "")
    assert (tmp_path / "resume" / "summary.json").is_file()
