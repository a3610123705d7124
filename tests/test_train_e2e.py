"""End to end: ``python train.py`` as a subprocess, and ``run(cfg)`` in-process, on tiny data."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from agentfarm_db import write_agentfarm_db
from conftest import REPO, TINY, TINY_MODEL, only_run_dir, read_summary, train_cli
from omegaconf import OmegaConf

from meaning_transform.checkpoint_reader import read_checkpoint
from meaning_transform.errors import CheckpointError
from meaning_transform.training import run

pytestmark = pytest.mark.slow


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_default_run_writes_every_output(tmp_path):
    proc = train_cli(
        *TINY,
        "trainer.max_epochs=4",
        "callbacks.periodic_checkpoint.every_n_epochs=2",
        "callbacks.curve_plotter.plot_every_n_epochs=2",
        "callbacks.early_stopping.patience=100",
        "experiment_name=e2e",
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path, "e2e")
    for name in [
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "config.yaml",
        "checkpoints/epoch_002.ckpt",
        "checkpoints/epoch_004.ckpt",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "metrics.csv",
        "semantic_drift.csv",
        "training_curves.png",
        "semantic_drift.png",
        "summary.json",
    ]:
        assert (run_dir / name).is_file(), name
    rows = csv_rows(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]  # one row per epoch
    for key in (
        "train/loss",
        "train/recon",
        "train/kl",
        "train/semantic",
        "train/rate",
        "val/loss",
        "val/drift",
        "val/preservation",
        "val/rate_bits",
        "val/drift/position_x",
        "val/drift_group/spatial",
        "val/mae/current_health",
    ):
        assert rows[-1][key] != "", key
    drift = csv_rows(run_dir / "semantic_drift.csv")
    assert len(drift) == 4
    assert float(drift[-1]["drift"]) == pytest.approx(1 - float(drift[-1]["preservation"]))
    assert "preservation_group/status" in drift[-1]
    summary = read_summary(run_dir)
    assert summary["experiment_dir"] == str(run_dir.resolve())
    assert summary["best_model_path"] == str((run_dir / "checkpoints/best.ckpt").resolve())
    assert len(summary["train_losses"]) == 4 and len(summary["semantic_drift"]) == 4
    assert summary["test"]["test/drift"] >= 0
    # the last lines say where the run is, best loss and epoch, drift per group, bits per state
    tail = proc.stdout + proc.stderr
    assert f"run directory: {run_dir.resolve()}" in tail
    assert "best val/loss:" in tail and "by group: spatial" in tail and "bits per state" in tail
    # classical baselines of the same test split, beside this model's numbers in the last line
    baselines = summary["baselines"]
    assert [e["k"] for e in baselines["quantizer"]] == [1, 2, 4, 8, 16]
    assert baselines["quantizer"][0]["drift"] == 0.0 and baselines["delta"][0]["drift"] == 0.0
    assert "classical quantizer:" in tail and "per-agent delta:" in tail
    assert "this model:" in proc.stdout.strip().splitlines()[-1]
    # the composed config lives inside every checkpoint and load needs nothing else
    ckpt = read_checkpoint(run_dir / "checkpoints/last.ckpt")
    assert ckpt["run_config"]["experiment_name"] == "e2e"


def test_seed_options_take_effect(tmp_path):
    proc = train_cli(
        *TINY,
        "experiment_name=custom_training",
        "compression=vq",
        "compression.level=2.0",
        "trainer.max_epochs=3",
        "data.batch_size=32",
        "model.latent_dim=8",
        "optimizer.lr=0.002",
        "data.num_states=700",
        "debug=limit",
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path, "custom_training")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["compression"]["_target_"].endswith("VQBottleneck")
    assert cfg["compression"]["level"] == 2.0
    assert cfg["data"]["batch_size"] == 32 and cfg["data"]["num_states"] == 700
    assert cfg["model"]["latent_dim"] == 8 and cfg["optimizer"]["lr"] == 0.002
    assert cfg["verbose"] is True  # --debug: debug=... turns on verbose logging
    assert cfg["trainer"]["max_epochs"] == 3  # debug=limit sets 3; our override agrees
    summary = read_summary(run_dir)
    assert summary["compression"] == "VQBottleneck" and summary["epochs_run"] == 3


# Subprocess cases, one per kind of failure (Hydra composition, our validation, data); every
# other bad value is checked in-process in test_compose.py.
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["compression=foo"], "error: compression=foo: no such option; choices: entropy"),
        (["model.latent_dim=0"], "error: model.latent_dim=0 is invalid: expected an integer >= 1"),
        (
            ["data=sqlite", "data.path=/nonexistent/simulation.db"],
            "error: data.path='/nonexistent/simulation.db': file not found",
        ),
    ],
)
def test_bad_config_fails_before_anything_is_written(tmp_path, overrides, message):
    proc = train_cli(*overrides, "experiment_name=bad", f"paths.log_dir={tmp_path}")
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    # only Hydra's own files (.hydra/*.yaml and train.log) may exist
    assert all(".hydra" in p.parts or p.name == "train.log" for p in written), written


def test_resume_is_exact(tiny_cfg):
    base = ("scheduler=step", "test=false", "compression=entropy")
    whole = run(tiny_cfg(*base, "trainer.max_epochs=6", out="whole"))
    first = run(tiny_cfg(*base, "trainer.max_epochs=3", out="first"))
    resumed = run(
        tiny_cfg(
            *base, "trainer.max_epochs=6", f"ckpt_path={first['last_model_path']}", out="second"
        )
    )
    a = torch.load(whole["last_model_path"], weights_only=True)
    b = torch.load(resumed["last_model_path"], weights_only=True)
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3, 4, 5, 6]  # drift history too
    assert resumed["resumed_from"] == str(Path(first["last_model_path"]).resolve())
    assert (Path(resumed["experiment_dir"]) / "checkpoints/best.ckpt").is_file()
    for x, y in zip(whole["history"], resumed["history"], strict=True):
        assert x["val/loss"] == pytest.approx(y["val/loss"], abs=1e-6)


def test_resume_restores_early_stopping_state(tiny_cfg):
    first = run(tiny_cfg("test=false", "trainer.max_epochs=3", out="a"))
    ckpt = read_checkpoint(first["last_model_path"])
    es = next(v for k, v in ckpt["callbacks"].items() if k.startswith("EarlyStopping"))
    assert "wait_count" in es and "best_score" in es
    second = run(
        tiny_cfg(
            "test=false", "trainer.max_epochs=4", f"ckpt_path={first['last_model_path']}", out="b"
        )
    )
    assert second["epochs_run"] == 4 and second["best_epoch"] <= 4


def test_init_from_loads_weights_only_and_records_lineage(tiny_cfg):
    stage1 = run(tiny_cfg("test=false", "loss.kl_weight=1.0", out="s1"))
    stage2 = run(
        tiny_cfg(
            "test=false",
            "loss.kl_weight=0.1",
            "loss.semantic_weight=1.0",
            f"init_from={stage1['best_model_path']}",
            out="s2",
        )
    )
    assert stage2["init_from"] == stage1["best_model_path"]
    assert [r["epoch"] for r in stage2["history"]] == [1, 2]  # fresh epochs, fresh optimizer
    assert stage2["parent_run"]["output_dir"] == str(Path(stage1["experiment_dir"]))
    assert stage2["changed_loss_weights"]["semantic_weight"][1] == 1.0
    # the default encoder is deterministic: its KL is 0, so a changed kl_weight changed nothing
    assert "kl_weight" not in stage2["changed_loss_weights"]


def test_checkpoint_that_does_not_fit_names_the_keys(tiny_cfg, tmp_path):
    first = run(tiny_cfg("test=false", "trainer.max_epochs=1", out="a"))
    with pytest.raises(
        CheckpointError,
        match=r"does not fit.*\[4, 3, 1\] vs model \[6, 3, 1\].*more.*model.latent_dim: checkpoint 4, config 6",
    ):
        run(tiny_cfg("model.latent_dim=6", f"ckpt_path={first['last_model_path']}", out="b"))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(Path(first["last_model_path"]).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot be read"):
        run(tiny_cfg(f"ckpt_path={truncated}", out="c"))


def test_sigkill_mid_training_leaves_a_loadable_last_ckpt(tmp_path):
    args = [
        *TINY,
        "data.num_states=1200",
        "trainer.max_epochs=200",
        "callbacks.early_stopping.patience=1000",
        "logger=none",
        "test=false",
        "experiment_name=killed",
        f"paths.log_dir={tmp_path}",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 180
        last = None
        while time.time() < deadline:
            found = list(tmp_path.glob("killed/*/checkpoints/last.ckpt"))
            if found and read_checkpoint(found[0])["epoch"] >= 1:
                last = found[0]
                break
            time.sleep(0.2)
        assert last is not None, "no last.ckpt after 180 s"
        time.sleep(0.37)  # somewhere inside a later epoch (or a write)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ckpt = read_checkpoint(last)  # complete and loadable, never truncated
    done = ckpt["epoch"] + 1
    resumed = train_cli(
        *args[:-2],
        f"trainer.max_epochs={done + 1}",
        "experiment_name=resumed",
        f"paths.log_dir={tmp_path}",
        f"ckpt_path={last}",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = read_summary(only_run_dir(tmp_path, "resumed"))
    assert [r["epoch"] for r in summary["history"]] == list(range(1, done + 2))
    assert summary["resumed_from"] == str(last.resolve())


def test_sqlite_data_from_a_db_the_test_writes(tmp_path):
    db = tmp_path / "simulation.db"
    write_agentfarm_db(db, num_states=800, num_agents=30)
    before = db.read_bytes()
    proc = train_cli(
        *TINY_MODEL,
        "data=sqlite",
        f"data.path={db}",
        "experiment_name=sql",
        f"paths.log_dir={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert db.read_bytes() == before
    summary = read_summary(only_run_dir(tmp_path / "out", "sql"))
    assert summary["epochs_run"] == 2


def test_real_agentfarm_db(tiny_cfg, real_db):
    mtime, size = real_db.stat().st_mtime, real_db.stat().st_size
    summary = run(tiny_cfg("data=sqlite", f"data.path={real_db}", "data.limit=4000", "test=false"))
    assert summary["epochs_run"] == 2 and summary["drift"] is not None
    assert set(summary["drift_groups"]) >= {"spatial", "resources", "status", "role"}
    assert summary["baselines"]["quantizer"][0]["drift"] == 0.0
    assert (real_db.stat().st_mtime, real_db.stat().st_size) == (mtime, size)


def test_config_yaml_is_fully_resolved(tiny_cfg):
    summary = run(tiny_cfg("test=false", "trainer.max_epochs=1"))
    cfg = OmegaConf.load(Path(summary["experiment_dir"]) / "config.yaml")
    assert "${" not in OmegaConf.to_yaml(cfg)
