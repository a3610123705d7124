"""Sweep report: rows, CSV, seed grouping, Pareto front, plot, CLI and the Hydra callback."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from meaning_transform.report import (
    RATE_DRIFT_PNG,
    SUMMARY_CSV,
    bits_at_drift,
    build_report,
    collect,
    group_seeds,
    main,
    override_key,
    pareto_front,
)
from meaning_transform.sweep_callback import SweepReport

TARGETS = {
    "entropy": "meaning_transform.models.bottlenecks.entropy.EntropyBottleneck",
    "vq": "meaning_transform.models.bottlenecks.vq.VQBottleneck",
    "none": "meaning_transform.models.bottlenecks.identity.IdentityBottleneck",
}
CLASS = {k: v.rsplit(".", 1)[1] for k, v in TARGETS.items()}


def _job(sweep: Path, num: int, kind: str, level: float, seed: int) -> Path:
    """A job dir as Hydra leaves it before the task runs: .hydra/{overrides,config}.yaml."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    overrides = [f"compression={kind}", f"compression.level={level:g}", f"seed={seed}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"seed": seed, "compression": {"_target_": TARGETS[kind], "level": level}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return job


def _ok(
    sweep: Path,
    num: int,
    kind: str,
    level: float,
    seed: int,
    bits: float,
    drift: float,
    **extra: Any,
) -> Path:
    job = _job(sweep, num, kind, level, seed)
    summary = {
        "experiment_name": "sweep",
        "experiment_dir": str(job),
        "best_val_loss": 0.5 + drift,
        "best_epoch": 3,
        "epochs_run": 4,
        "rate_bits": bits,
        "drift": drift,
        "preservation": 1.0 - drift,
        "drift_groups": {"position": drift / 2, "vitals": drift * 2},
        "compression": CLASS[kind],
        "compression_level": level,
        "history": [],
        **extra,
    }
    (job / "summary.json").write_text(json.dumps(summary))
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Seven jobs: an entropy seed pair, entropy/vq/none singles, one failed, one incomplete."""
    s = tmp_path / "multirun" / "2024-01-01_00-00-00"
    s.mkdir(parents=True)
    _ok(s, 0, "entropy", 1, 1, bits=10.0, drift=0.10)
    _ok(s, 1, "entropy", 1, 2, bits=12.0, drift=0.20)
    _ok(s, 2, "entropy", 4, 1, bits=4.0, drift=0.30, wall_time_s=12.5)
    _ok(s, 3, "vq", 2, 1, bits=6.0, drift=0.35)
    _ok(s, 4, "none", 1, 1, bits=30.0, drift=0.05)
    failed = _job(s, 5, "vq", 8, 1)
    error = {"error": "ConfigError: compression.level=8 too high", "overrides": ["x=1"]}
    (failed / "failed.json").write_text(json.dumps(error))
    _job(s, 6, "none", 8, 1)  # started, never finished
    for job in ("0", "1", "3", "4"):  # wall time from mtimes: summary.json - .hydra/config.yaml
        os.utime(s / job / ".hydra" / "config.yaml", (1000.0, 1000.0))
        os.utime(s / job / "summary.json", (1042.5, 1042.5))
    (s / "multirun.yaml").write_text("{}\n")
    (s / ".submitit").mkdir()  # launcher folders are not jobs
    return s


def test_collect_rows_status_and_values(sweep: Path) -> None:
    rows = collect(sweep)
    assert [r["job"] for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["failed", "incomplete"]
    assert [r["kind"] for r in rows] == ["entropy"] * 3 + ["vq", "none", "vq", "none"]
    r0 = rows[0]
    assert r0["overrides"] == "compression=entropy compression.level=1 seed=1"
    assert (r0["compression"], r0["compression.level"], r0["seed"]) == ("entropy", "1", "1")
    assert (r0["rate_bits"], r0["drift"], r0["level"]) == (10.0, 0.10, 1)
    assert r0["drift/position"] == pytest.approx(0.05)
    assert r0["preservation/vitals"] == pytest.approx(0.8)
    assert r0["wall_time_s"] == pytest.approx(42.5)
    assert rows[2]["wall_time_s"] == 12.5  # summary's own wall_time_s wins
    failed, incomplete = rows[5], rows[6]
    assert failed["error"] == "ConfigError: compression.level=8 too high"
    assert failed["overrides"] == "compression=vq compression.level=8 seed=1"  # .hydra wins
    assert failed["level"] == 8 and failed["rate_bits"] is None
    assert incomplete["error"] is None and incomplete["wall_time_s"] is None


def test_csv_columns_and_rows(sweep: Path) -> None:
    build_report(sweep)
    with open(sweep / SUMMARY_CSV, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        header = reader.fieldnames
    assert header[:3] == ["job", "status", "overrides"]
    for col in (
        "kind",
        "level",
        "rate_bits",
        "drift",
        "preservation",
        "best_val_loss",
        "best_epoch",
        "epochs_run",
        "wall_time_s",
        "error",
        "compression",
        "compression.level",
        "seed",
        "drift/position",
        "preservation/vitals",
    ):
        assert col in header
    assert len(rows) == 7
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["failed", "incomplete"]
    assert rows[5]["error"].startswith("ConfigError") and rows[5]["rate_bits"] == ""
    assert float(rows[3]["rate_bits"]) == 6.0 and rows[3]["kind"] == "vq"
    png = sweep / RATE_DRIFT_PNG
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert not list(sweep.glob(".*.tmp"))  # atomic writes leave no temp files


def test_seed_groups_mean_and_sample_std(sweep: Path) -> None:
    groups = {g["overrides"]: g for g in group_seeds(collect(sweep))}
    assert len(groups) == 4  # failed and incomplete jobs are not plotted
    pair = groups["compression.level=1 compression=entropy"]
    assert pair["jobs"] == [0, 1] and pair["n"] == 2
    assert pair["rate_bits"] == pytest.approx(11.0)
    assert pair["drift"] == pytest.approx(0.15)
    assert pair["rate_bits_std"] == pytest.approx(math.sqrt(2.0))  # sample std of 10, 12
    assert pair["drift_std"] == pytest.approx(math.sqrt(0.005))  # sample std of 0.1, 0.2
    single = groups["compression.level=2 compression=vq"]
    assert (single["n"], single["rate_bits_std"], single["drift_std"]) == (1, 0.0, 0.0)


def test_pareto_front_by_hand() -> None:
    pts = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (2.0, 3.0), (5.0, 1.0), (1.0, 6.0)]
    assert pareto_front(pts) == [(1.0, 5.0), (2.0, 3.0), (4.0, 1.0)]
    assert pareto_front([]) == []
    assert pareto_front([(3.0, 3.0)]) == [(3.0, 3.0)]


def test_pareto_front_of_fake_sweep(sweep: Path) -> None:
    pts = [(g["rate_bits"], g["drift"]) for g in group_seeds(collect(sweep))]
    front = [v for point in pareto_front(pts) for v in point]
    assert front == pytest.approx([4.0, 0.30, 11.0, 0.15, 30.0, 0.05])


def test_override_key() -> None:
    assert override_key("+model.width=8") == "model.width"
    assert override_key("++seed=1") == "seed"
    assert override_key("~logger") == "logger"


def test_cli_prints_table_and_writes(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "bits/state" in out and "incomplete" in out
    assert "job 5 failed: ConfigError: compression.level=8 too high" in out
    assert (sweep / SUMMARY_CSV).is_file() and (sweep / RATE_DRIFT_PNG).is_file()


def test_cli_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: sweep directory not found")
    assert not (tmp_path / "nope").exists()


def test_cli_dir_without_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "multirun.yaml").write_text("{}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no job directories" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_plot_with_nothing_finished(tmp_path: Path) -> None:
    _job(tmp_path, 0, "vq", 1, 1)
    build_report(tmp_path)
    assert (tmp_path / RATE_DRIFT_PNG).stat().st_size > 0


def _hydra_cfg(sweep: Path, job: Path, mode: str = "MULTIRUN") -> Any:
    return OmegaConf.create(
        {
            "hydra": {
                "mode": mode,
                "sweep": {"dir": str(sweep)},
                "runtime": {"output_dir": str(job)},
                "overrides": {"task": ["compression=vq", "seed=3"]},
            }
        }
    )


def test_callback_writes_failed_json_and_report(sweep: Path) -> None:
    job = _job(sweep, 7, "vq", 3, 3)
    ret = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("loss is nan"))
    SweepReport().on_job_end(config=_hydra_cfg(sweep, job), job_return=ret)
    record = json.loads((job / "failed.json").read_text())
    assert record["error"] == "RuntimeError: loss is nan"
    assert record["overrides"] == ["compression=vq", "seed=3"]
    with open(sweep / SUMMARY_CSV, newline="") as fh:
        assert [r["status"] for r in csv.DictReader(fh)][-1] == "failed"


def test_callback_keeps_training_codes_failed_json(sweep: Path) -> None:
    job = sweep / "5"
    before = (job / "failed.json").read_text()
    ret = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("other"))
    SweepReport().on_job_end(config=_hydra_cfg(sweep, job, mode="RUN"), job_return=ret)
    assert (job / "failed.json").read_text() == before
    assert not (sweep / SUMMARY_CSV).exists()  # single runs get no sweep report


def test_callback_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _hydra_cfg(tmp_path / "missing", tmp_path / "missing" / "0")
    with caplog.at_level(logging.WARNING):
        SweepReport().on_multirun_end(config=cfg)
    assert "sweep report not written" in caplog.text
    assert not (tmp_path / "missing").exists()


def test_callback_registered_in_hydra_config() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    assert isinstance(instantiate(cfg.hydra.callbacks.sweep_report), SweepReport)


def test_table_lifts_shared_overrides(tmp_path: Path) -> None:
    _ok(tmp_path, 0, "vq", 1, 7, bits=3.0, drift=0.2)
    _ok(tmp_path, 1, "vq", 2, 7, bits=2.0, drift=0.3)
    from meaning_transform.report import format_table

    lines = format_table(collect(tmp_path)).splitlines()
    assert lines[0] == "all jobs: compression=vq seed=7"
    assert lines[3].split()[:3] == ["0", "compression.level=1", "ok"]


def test_report_draws_the_classical_baselines(sweep: Path) -> None:
    import matplotlib.pyplot as plt

    from meaning_transform.report import _plot_baselines, read_baselines

    baselines = {
        "num_states": 10,
        "quantizer": [
            {"k": 1, "bits_per_state": 30.0, "drift": 0.0},
            {"k": 2, "bits_per_state": 24.0, "drift": 0.25},
        ],
        "delta": [{"k": 1, "bits_per_state": 3.4, "drift": 0.0}],
    }
    path = sweep / "3" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "baselines": baselines}))
    assert read_baselines(sweep) == baselines  # jobs 0-2 have none: the first that has them
    fig, ax = plt.subplots()
    assert _plot_baselines(ax, baselines) == [30.0, 24.0, 3.4]
    lines = [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]
    assert lines == [([30.0, 24.0], [0.0, 0.25]), ([3.4], [0.0])]
    plt.close(fig)
    build_report(sweep)
    assert (sweep / RATE_DRIFT_PNG).stat().st_size > 0


def _with_model(job: Path, context: str | None, target: str = "models.mlp.MLPCodec") -> None:
    """Give a fake job's composed config a ``model`` node (``model.context`` and its class)."""
    path = job / ".hydra" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["model"] = {"_target_": f"meaning_transform.{target}", "context": context}
    path.write_text(yaml.safe_dump(config))


def test_bits_at_1_and_5_percent_per_context_beside_lossless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fewest bits with drift <= 1% / <= 5% per (kind, model.context), over the lossless job's
    bits at drift 0: by hand, 30 / 5 = 6.0, 24 / 5 = 4.8, 28 / 5 = 5.6."""
    runs = [  # (context, level, bits, drift)
        (None, 1, 30.0, 0.0),
        (None, 8, 24.0, 0.03),
        (None, 10, 19.0, 0.2),
        ("previous", 1, 28.0, 0.005),
        ("previous", 10, 20.0, 0.2),
    ]
    for num, (context, level, bits, drift) in enumerate(runs):
        _with_model(_ok(tmp_path, num, "entropy", level, 1, bits=bits, drift=drift), context)
    lossless = _ok(tmp_path, 5, "entropy", 1, 1, bits=5.0, drift=0.0)
    _with_model(lossless, "history", "models.lossless.LosslessCodec")
    rows = collect(tmp_path)
    assert rows[5]["kind"] == "lossless" and rows[3]["context"] == "previous"
    got = {(e["kind"], e["context"]): e for e in bits_at_drift(rows)}
    assert set(got) == {("entropy", "null"), ("entropy", "previous")}
    plain, previous = got["entropy", "null"], got["entropy", "previous"]
    assert (plain["bits@1%"], plain["bits@5%"], plain["lossless_bits"]) == (30.0, 24.0, 5.0)
    assert (plain["/lossless@1%"], plain["/lossless@5%"]) == pytest.approx((6.0, 4.8))
    assert (previous["bits@1%"], previous["bits@5%"]) == (28.0, 28.0)
    assert previous["/lossless@1%"] == pytest.approx(5.6)
    build_report(tmp_path)
    out = capsys.readouterr().out
    assert "entropy    previous          28.00         28.00       5.00         5.600" in out
    with open(tmp_path / SUMMARY_CSV, newline="") as fh:
        assert [r["context"] for r in csv.DictReader(fh)] == [
            "",
            "",
            "",
            *["previous"] * 2,
            "history",
        ]
