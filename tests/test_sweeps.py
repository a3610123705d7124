"""Multiruns of ``train.py`` on tiny data: grid, seeds (joblib), a failing job, Optuna, the objective."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY, read_summary, train_cli
from omegaconf import OmegaConf

from meaning_transform.errors import ConfigError
from meaning_transform.report import RATE_DRIFT_PNG, SUMMARY_CSV
from meaning_transform.run_summary import optimized_value

#: one epoch, no test split, no Lightning CSV log, no per-run plots (the sweep's own report is
#: still drawn): each job is a few seconds on 2 cores
FAST = [*TINY, "trainer.max_epochs=1", "test=false", "logger=none", "callbacks.curve_plotter=null"]
#: FAST without model.latent_dim: Optuna treats a plain key=value as fixed, not searched
SEARCHABLE = [a for a in FAST if not a.startswith("model.latent_dim=")]


def sweep_dir(log_dir: Path, experiment: str) -> Path:
    """The single multirun directory of ``experiment`` under ``log_dir``."""
    sweeps = list((log_dir / experiment / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def rate_drift(summary: dict, beta: float) -> float:
    """``val/drift + beta * val/rate_bits / 32`` at the best epoch, from the summary's fields."""
    return summary["drift"] + beta * summary["rate_bits"] / 32


def test_optimized_value_reads_the_best_epoch_and_fails_loudly():
    summary = {
        "best_epoch": 2,
        "history": [
            {"epoch": 1, "val/loss": 3.0, "val/rate_drift": 0.9},
            {"epoch": 2, "val/loss": 2.0, "val/rate_drift": 0.7},
            {"epoch": 3, "val/loss": 2.5, "val/rate_drift": 0.5},
        ],
    }
    assert optimized_value(OmegaConf.create({"optimized_metric": "val/rate_drift"}), summary) == 0.7
    assert optimized_value(OmegaConf.create({"optimized_metric": None}), summary) is None
    with pytest.raises(
        ConfigError, match=r"optimized_metric='val/nope' was never logged.*val/loss"
    ):
        optimized_value(OmegaConf.create({"optimized_metric": "val/nope"}), summary)


@pytest.mark.slow
def test_grid_sweep_writes_every_job_and_the_report(tmp_path):
    proc = train_cli(
        "-m",
        "compression=entropy,vq",
        "compression.level=1,2",
        *FAST,
        "experiment_name=grid",
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir(tmp_path, "grid")
    for job in range(4):
        summary = read_summary(sweep / str(job))
        assert summary["experiment_dir"] == str((sweep / str(job)).resolve())
        assert summary["epochs_run"] == 1
    rows = csv_rows(sweep / SUMMARY_CSV)
    assert [(r["job"], r["status"]) for r in rows] == [(str(j), "ok") for j in range(4)]
    assert [(r["kind"], float(r["level"])) for r in rows] == [
        ("entropy", 1.0),
        ("entropy", 2.0),
        ("vq", 1.0),
        ("vq", 2.0),
    ]
    assert all(float(r["rate_bits"]) > 0 and 0 <= float(r["drift"]) <= 1 for r in rows)
    png = sweep / RATE_DRIFT_PNG
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the report CLI rebuilds both files from the job directories alone
    before = (sweep / SUMMARY_CSV).read_text()
    (sweep / SUMMARY_CSV).unlink()
    png.unlink()
    rebuilt = subprocess.run(
        [sys.executable, "-m", "meaning_transform.report", str(sweep)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert (sweep / SUMMARY_CSV).read_text() == before
    assert png.is_file()
    assert "compression=vq compression.level=2" in rebuilt.stdout


@pytest.mark.slow
def test_failed_job_is_reported_and_the_sweep_exits_1(tmp_path):
    proc = train_cli(
        "-m", *FAST, "model.latent_dim=4,0", "experiment_name=fail", f"paths.log_dir={tmp_path}"
    )  # after FAST, whose model.latent_dim=4 would otherwise win
    assert proc.returncode == 1, proc.stderr[-3000:]
    sweep = sweep_dir(tmp_path, "fail")
    assert read_summary(sweep / "0")["epochs_run"] == 1  # the good job ran to the end
    assert not (sweep / "1" / "summary.json").exists()
    failed = json.loads((sweep / "1" / "failed.json").read_text())
    assert "model.latent_dim=0 is invalid" in failed["error"]
    rows = csv_rows(sweep / SUMMARY_CSV)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "failed")]
    assert "model.latent_dim=0 is invalid" in rows[1]["error"]
    assert (sweep / RATE_DRIFT_PNG).is_file()
    assert "1 of 2 jobs failed" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_seed_sweep_on_the_joblib_launcher(tmp_path):
    proc = train_cli(
        "-m",
        "seed=1,2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *FAST,
        "experiment_name=seeds",
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir(tmp_path, "seeds")
    hydra_cfg = yaml.safe_load((sweep / "0" / ".hydra" / "hydra.yaml").read_text())
    assert hydra_cfg["hydra"]["launcher"]["_target_"].endswith("JoblibLauncher")
    rows = csv_rows(sweep / SUMMARY_CSV)
    assert [(r["seed"], r["status"]) for r in rows] == [("1", "ok"), ("2", "ok")]
    first, second = (read_summary(sweep / str(j)) for j in range(2))
    assert first["best_val_loss"] != second["best_val_loss"]  # the seed reaches training
    assert (sweep / RATE_DRIFT_PNG).is_file()


@pytest.mark.slow
def test_optuna_search_minimizes_the_rate_drift_objective(tmp_path):
    proc = train_cli(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        *SEARCHABLE,
        "experiment_name=search",
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir(tmp_path, "search")
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {
        "model.latent_dim",
        "compression.level",
        "loss.rate_weight",
        "loss.semantic_weight",
        "optimizer.lr",
    }
    values = []
    for job in range(3):
        summary = read_summary(sweep / str(job))
        assert summary["optimized_metric"] == "val/rate_drift"
        assert summary["objective_beta"] == 0.1
        # the objective is computed from the logged drift and rate, as documented
        assert summary["optimized_value"] == pytest.approx(rate_drift(summary, 0.1), rel=1e-6)
        values.append(summary["optimized_value"])
    assert result["best_value"] == pytest.approx(min(values), rel=1e-9)
    assert [r["status"] for r in csv_rows(sweep / SUMMARY_CSV)] == ["ok"] * 3


@pytest.mark.slow
def test_unlogged_optimized_metric_fails_the_run(tmp_path):
    proc = train_cli(
        *FAST, "optimized_metric=val/nope", "experiment_name=nope", f"paths.log_dir={tmp_path}"
    )
    assert proc.returncode == 2
    assert "error: optimized_metric='val/nope' was never logged; logged metrics: [" in proc.stderr
    assert "Traceback" not in proc.stderr
    (run_dir,) = (tmp_path / "nope").iterdir()
    summary = read_summary(run_dir)  # the training itself is kept
    assert summary["optimized_metric"] == "val/nope" and summary["optimized_value"] is None
    assert not math.isnan(summary["drift"])


@pytest.mark.slow
def test_failed_optuna_trial_is_marked_failed_and_the_search_goes_on(tmp_path):
    # only latent_dim is searched; with this sampler seed trials 0 and 1 draw the invalid 0
    proc = train_cli(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.params=null",
        "hydra.sweeper.sampler.seed=1",
        *SEARCHABLE,
        "model.latent_dim=choice(4,0)",
        "experiment_name=search_fail",
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # jobs failed: the sweep says so at the end
    out = proc.stdout + proc.stderr
    assert "Failed experiment: ConfigError: model.latent_dim=0 is invalid" in out
    sweep = sweep_dir(tmp_path, "search_fail")
    rows = csv_rows(sweep / SUMMARY_CSV)
    assert [(r["status"], r["model.latent_dim"]) for r in rows] == [
        ("failed", "0"),
        ("failed", "0"),
        ("ok", "4"),
    ]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_params"] == {"model.latent_dim": 4}
    assert result["best_value"] == pytest.approx(read_summary(sweep / "2")["optimized_value"])
