"""Safety and robustness (issue 10): checkpoints cannot run code, runs cannot collide or escape
outputs/, bad command lines and faults are one line; each test failed before its fix."""

from __future__ import annotations

import csv
import os
import pickle
import resource
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from agentfarm_db import write_agentfarm_db
from conftest import REPO, TINY, TINY_MODEL, train_cli

from meaning_transform.api import load_config
from meaning_transform.assemble import resolve_output_dir
from meaning_transform.callbacks.checkpoint import AtomicCheckpointIO
from meaning_transform.errors import CheckpointError, ConfigError
from meaning_transform.evaluate import main as evaluate_main
from meaning_transform.training import run

pytestmark = pytest.mark.slow

#: a 1-epoch in-process run with nothing optional
QUICK = [*TINY, "trainer.max_epochs=1", "logger=none", "test=false"]


class Payload:
    """Pickles as ``os.system("touch <marker>")``: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make_evil(folder: Path, kind: str) -> tuple[Path, Path]:
    """(a malicious checkpoint in torch's zip format or as a raw pickle, its marker file)."""
    marker = folder / f"pwned_{kind}"
    path = folder / f"evil_{kind}.ckpt"
    content = {"state_dict": {}, "epoch": 0, "hyper_parameters": Payload(marker)}
    if kind == "zip":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=2))
    return path, marker


@pytest.fixture(params=["zip", "raw"])
def evil_ckpt(request, tmp_path) -> tuple[Path, Path]:
    """Both kinds of malicious checkpoint."""
    return make_evil(tmp_path, request.param)


def one_error_line(stderr: str) -> str:
    """The single ``error:`` line of stderr (asserting there is exactly one, no traceback)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


# ---------------------------------------------------------------- 1: checkpoints cannot run code
def test_malicious_checkpoint_never_runs(evil_ckpt, tmp_path, capsys):
    path, marker = evil_ckpt
    for key in ("ckpt_path", "init_from"):
        cfg = load_config([*QUICK, f"{key}={path}", f"paths.output_dir={tmp_path / key}"])
        with pytest.raises(CheckpointError, match="refused|cannot be read") as err:
            run(cfg)
        assert "\n" not in str(err.value)
    assert evaluate_main([f"ckpt_path={path}"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError):  # what Trainer.fit/test(ckpt_path=...) load through
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_malicious_checkpoint_through_train_py(tmp_path):
    """The CLI end to end (both formats go through the loader tested in-process above)."""
    path, marker = make_evil(tmp_path, "zip")
    proc = train_cli(*QUICK, f"ckpt_path={path}", f"paths.log_dir={tmp_path / 'out'}")
    assert proc.returncode == 2
    assert str(path) in one_error_line(proc.stderr)
    assert not marker.exists()


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "random.ckpt"
    path.write_bytes(bytes(range(256)) * 40)
    cfg = load_config([*QUICK, f"ckpt_path={path}", f"paths.output_dir={tmp_path / 'r'}"])
    with pytest.raises(CheckpointError, match=r"cannot be read \(truncated, not a checkpoint"):
        run(cfg)


# ---------------------------------------------------------------- 2, 4: the command line
@pytest.mark.parametrize(
    "args, expected",
    [
        (["experiment_name=.."], "experiment_name='..' is invalid: expected one folder name"),
        (["experiment_name=../../x"], "experiment_name='../../x' is invalid"),
        (["-m", "experiment_name=a,.."], "experiment_name='..' is invalid"),
        (
            ["compression=foo"],
            "compression=foo: no such option; choices: entropy, lossless, none, vq",
        ),
        (["optimizer=sgd"], "optimizer=sgd: no such option; choices: adam, adamw"),
        (["data.batchsize=64"], "data.batchsize=64: no such key; did you mean data.batch_size?"),
        (["--experiment", "x"], "--experiment is not an option of train.py: settings are "),
        (
            ["-m", "compression=vq,foo"],
            "compression=foo: no such option; choices: entropy, lossless, none",
        ),
    ],
)
def test_bad_command_line_is_one_line_and_writes_nothing(args, expected, tmp_path):
    """Checked before Hydra creates a folder: not even .hydra/ or train.log appear."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args, f"paths.log_dir={tmp_path}/outputs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [proc.stderr.strip()]  # one line, nothing else
    assert expected in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_evaluate_bad_group_and_bad_database_are_one_line(tmp_path, capsys):
    assert evaluate_main(["ckpt_path=x.ckpt", "data=foo"]) == 2
    assert (
        capsys.readouterr().err == "error: data=foo: no such option; choices: sqlite, synthetic\n"
    )


# ---------------------------------------------------------------- 3: unique run directories
def test_runs_never_share_a_directory(tmp_path):
    """Folders for the next 30 s exist already (as if other runs took them): two runs started at
    once each get a new one of their own."""
    exp = tmp_path / "same"
    now = datetime.now()
    taken = {(now + timedelta(seconds=s)).strftime("%Y-%m-%d_%H-%M-%S") for s in range(30)}
    for name in taken:
        (exp / name).mkdir(parents=True)
    args = [*TINY_MODEL, "data.num_states=300", "data.num_agents=15", "trainer.max_epochs=1"]
    args += ["logger=none", "test=false", "experiment_name=same"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "train.py"),
                *args,
                f"paths.log_dir={tmp_path}",
                f"seed={s}",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    assert all(not any((exp / name).iterdir()) for name in taken)
    new = sorted(p for p in exp.iterdir() if p.name not in taken)
    assert len(new) == 2 and all(p.name.rsplit("_", 1)[0] in taken for p in new)
    seeds = {(p / "config.yaml").read_text().split("seed: ")[1].split()[0] for p in new}
    assert seeds == {"1", "2"}


def test_api_runs_in_the_same_second_get_their_own_directory(tmp_path):
    cfg = load_config([f"paths.log_dir={tmp_path}", "experiment_name=api"])
    first, second = resolve_output_dir(cfg), resolve_output_dir(cfg)
    assert first != second and first.is_dir() and second.is_dir()


# ---------------------------------------------------------------- 6: faults are one line
def test_unwritable_output_dir_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = load_config([*QUICK, f"paths.output_dir={blocker / 'run'}"])
    with pytest.raises(ConfigError, match=r"paths.output_dir='.*a_file/run': cannot write there"):
        run(cfg)


def test_full_disk_is_one_line(tmp_path):
    """A file-size limit (EFBIG, like ENOSPC) hits the first checkpoint write."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *QUICK, f"paths.log_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=limit,
    )
    assert proc.returncode == 1
    assert one_error_line(proc.stderr).startswith("error: cannot write ")
    assert ".ckpt: File too large" in proc.stderr


def test_huge_values_train_with_drop_invalid_and_fail_in_evaluate(tmp_path, capsys):
    db = tmp_path / "huge.db"
    write_agentfarm_db(db, 600, num_agents=30)
    with closing(sqlite3.connect(db)) as con:
        con.execute("UPDATE agent_states SET position_x = 1e308 WHERE rowid % 50 = 0")
        con.commit()
    data = ["data=sqlite", f"data.path={db}"]
    overrides = [*TINY_MODEL, *data, "data.drop_invalid=true", "trainer.max_epochs=1", "test=false"]
    summary = run(load_config([*overrides, "logger=none", f"paths.output_dir={tmp_path / 'r'}"]))
    assert summary["epochs_run"] == 1
    assert evaluate_main([f"ckpt_path={summary['best_model_path']}", *data]) == 2
    assert "rows per column: position_x: 12" in capsys.readouterr().err


# ---------------------------------------------------------------- 10: killed runs
def test_resume_cleans_temp_files_and_orphan_rows(tmp_path):
    out = tmp_path / "a"
    base = [*QUICK, "callbacks.periodic_checkpoint.every_n_epochs=1", f"paths.output_dir={out}"]
    run(load_config([*base, "trainer.max_epochs=3"]))
    # what a kill -9 leaves: temp files of interrupted writes
    stale = [out / "checkpoints" / ".last.ckpt.k1ll3d.tmp", out / ".metrics.csv.k1ll3d.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    # resume (into the same folder) from epoch 2: epoch 3's rows are orphans of a lost epoch
    run(load_config([*base, "trainer.max_epochs=2", f"ckpt_path={out}/checkpoints/epoch_002.ckpt"]))
    assert not any(p.exists() for p in stale)
    for name in ("metrics.csv", "semantic_drift.csv"):
        with open(out / name, newline="") as fh:
            assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2"], name
