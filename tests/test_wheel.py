"""The package as a user installs it: a wheel, in a fresh venv, run from a folder with no conf/:
the self-check, and the console commands (``meaning-train`` with a multirun and logger=mlflow,
``meaning-evaluate``, ``meaning-codec``)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from agentfarm_db import write_agentfarm_db
from conftest import mlflow_client
from test_self_check import assert_self_check_output

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("src", "conf", "pyproject.toml", "setup.py", "README.md")

#: a lossless model small enough for a second per job: its best.ckpt also serves the codec
TINY_LOSSLESS = [
    "compression=lossless",
    "data=sqlite",
    "data.path=sim.db",  # relative: the command's working folder
    "model.hidden_dims=[16]",
    "model.latent_dim=2",
    "trainer.max_epochs=1",
    "test=false",
    "callbacks.curve_plotter=null",
    "callbacks.progress_bar.refresh_rate=0",
    "torch_threads=1",
    "experiment_name=wheel",
]

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
def test_wheel_carries_its_configs_and_runs_from_anywhere(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
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
    bin_dir = tmp_path / "venv" / "bin"
    python = bin_dir / "python"
    fresh = Path(
        _run(
            [str(python), "-c", "import site; print(site.getsitepackages()[0])"], tmp_path
        ).stdout.strip()
    )
    (fresh / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # pip acting for the fresh venv (--python) writes the console scripts there, with its python;
    # it leaves the editable install it sees through deps.pth alone ("outside environment")
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index",
          "--force-reinstall", str(wheel)], tmp_path)  # fmt: skip

    elsewhere = tmp_path / "elsewhere"  # no conf/ here or above
    elsewhere.mkdir()
    _run([str(python), "-c", WHERE, str(fresh)], elsewhere)
    # the seed's self-check trains, resumes and reloads through load_config() and the wheel's conf/
    out = _run([str(python), "-m", "meaning_transform.test_training", "--keep", "check"], elsewhere)
    assert_self_check_output(out.stdout, out.stderr)

    # the console commands, from a folder of the user's
    out = _run([str(bin_dir / "meaning-train"), "--help"], elsewhere)
    assert "compression: entropy, lossless, none, vq" in out.stdout
    assert "logger: csv, mlflow, none, tensorboard" in out.stdout
    write_agentfarm_db(elsewhere / "sim.db", 600, num_agents=30)
    tracked = importlib.util.find_spec("mlflow") is not None
    if tracked:  # an empty store where the runs will log: <cwd>/outputs/mlflow.db
        (elsewhere / "outputs").mkdir()
        shutil.copy(request.getfixturevalue("mlflow_empty_store"), elsewhere / "outputs/mlflow.db")
    logger = "logger=mlflow" if tracked else "logger=none"
    _run([str(bin_dir / "meaning-train"), "-m", "seed=1,2", *TINY_LOSSLESS, logger], elsewhere)
    (sweep,) = (elsewhere / "outputs" / "wheel" / "multirun").iterdir()
    ckpt = sweep / "0" / "checkpoints" / "best.ckpt"
    assert ckpt.is_file() and (sweep / "1" / "summary.json").is_file()
    if tracked:
        client = mlflow_client(f"sqlite:///{elsewhere / 'outputs' / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("wheel").experiment_id])
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        nested = [r.data.tags.get("mlflow.parentRunId") for r in runs if r is not parent]
        assert nested == [parent.info.run_id] * 2
        assert {r.info.status for r in runs} == {"FINISHED"}

    out = _run([str(bin_dir / "meaning-evaluate"), f"ckpt_path={ckpt}", "split=val"], elsewhere)
    assert "drift 0.0000" in out.stdout and "wrote" in out.stdout
    # positional paths (data.path=, out=); the codec's own tests verify what it writes
    out = _run(
        [str(bin_dir / "meaning-codec"), "compress", "sim.db", "sim.mtc", f"ckpt_path={ckpt}"],
        elsewhere,
    )
    assert "(600 agent states) into sim.mtc" in out.stdout.splitlines()[0]
    assert (elsewhere / "sim.mtc").is_file()
