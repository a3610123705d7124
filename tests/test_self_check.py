"""``python -m meaning_transform.test_training``: the seed's self-check of the installed package."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_self_check_passes_one_line_per_check(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "meaning_transform.test_training", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["ok", "fit"],
        ["ok", "outputs"],
        ["ok", "resume"],
        ["ok", "reload"],
    ]
    assert lines[-1] == "all checks passed" and not proc.stderr.strip()
    assert (tmp_path / "resume" / "summary.json").is_file()
