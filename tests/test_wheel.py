"""The package as a user installs it: a wheel, in a fresh venv, run from a folder with no conf/."""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from test_self_check import assert_self_check_output

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("src", "conf", "pyproject.toml", "setup.py", "README.md")

WHERE = """
import sys
from pathlib import Path
import meaning_transform
assert Path(meaning_transform.__file__).is_relative_to(Path(sys.argv[1])), meaning_transform.__file__
"""


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_carries_its_configs_and_runs_from_anywhere(tmp_path: Path) -> None:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools (the build backend) is not installed here and cannot be fetched")
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info next to the code
    skip = shutil.ignore_patterns("*.egg-info", "__pycache__")
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=skip)
        else:
            shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            "dist",
            "./source",
        ],
        tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("meaning_transform-*.whl")

    # A fresh venv; the project's dependencies reach it through a .pth line (offline), which
    # adds their folder without running its .pth files (so not this checkout's editable install).
    _run([sys.executable, "-m", "venv", "--without-pip", "venv"], tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    fresh = Path(
        _run(
            [str(python), "-c", "import site; print(site.getsitepackages()[0])"], tmp_path
        ).stdout.strip()
    )
    (fresh / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(fresh), str(wheel)], tmp_path)

    elsewhere = tmp_path / "elsewhere"  # no conf/ here or above
    elsewhere.mkdir()
    _run([str(python), "-c", WHERE, str(fresh)], elsewhere)
    # the seed's self-check trains, resumes and reloads through load_config() and the wheel's conf/
    out = _run([str(python), "-m", "meaning_transform.test_training", "--keep", "check"], elsewhere)
    assert_self_check_output(out.stdout, out.stderr)
    ckpt = elsewhere / "check" / "fit" / "stage_1" / "checkpoints" / "best.ckpt"
    out = _run(
        [str(python), "-m", "meaning_transform.evaluate", f"ckpt_path={ckpt}", "split=test"],
        elsewhere,
    )
    assert "wrote" in out.stdout
