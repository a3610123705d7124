"""A finished run in one dict (``summary.json``, the Python API's return value) and its last lines.

Everything here is read from what the run logged (the per-epoch history rows, the test
metrics, the module's coding and classical baselines): nothing is re-derived after training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from meaning_transform.baselines import describe as describe_baselines
from meaning_transform.errors import ConfigError
from meaning_transform.io import atomic_write

log = logging.getLogger("meaning_transform")

Row = dict[str, float]


def summarize(
    cfg: DictConfig, rows: list[Row], best_path: str | None, lineage: dict[str, Any]
) -> dict[str, Any]:
    """The summary of a fit: the best epoch by ``monitor`` and the history it was picked from."""
    monitor, mode = cfg.monitor.metric, cfg.monitor.mode
    scored = [r for r in rows if monitor in r]
    best = (min if mode == "min" else max)(scored, key=lambda r: r[monitor]) if scored else None
    at_best = best or {}
    final = rows[-1] if rows else {}
    last_path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    summary = {
        "experiment_name": cfg.experiment_name,
        "experiment_dir": str(Path(cfg.paths.output_dir).resolve()),
        "monitor": monitor,
        "best_val_loss": at_best.get("val/loss"),
        "best_score": at_best.get(monitor),
        "best_epoch": int(best["epoch"]) if best else None,
        "epochs_run": int(final.get("epoch", 0)),
        "rate_bits": at_best.get("val/rate_bits", final.get("val/rate_bits")),
        "drift": at_best.get("val/drift"),
        "preservation": at_best.get("val/preservation"),
        "drift_groups": _under(at_best, "val/drift_group/"),
        "best_model_path": str(Path(best_path).resolve()) if best_path else None,
        "last_model_path": str(last_path.resolve()) if last_path.is_file() else None,
        "train_losses": _stage_rows(rows, "train"),
        "val_losses": _stage_rows(rows, "val"),
        "semantic_drift": [{"epoch": r["epoch"], **_under(r, "val/", DRIFT_KEYS)} for r in rows],
        "history": rows,
        "compression": cfg.compression.get("_target_", "").rsplit(".", 1)[-1],
        "compression_level": cfg.compression.get("level"),
        "stage": cfg.get("stage"),
        **lineage,
        "objective_beta": cfg.get("objective_beta"),
        "optimized_metric": cfg.get("optimized_metric"),
    }
    key = summary["optimized_metric"]
    summary["optimized_value"] = at_best_epoch(summary, key) if key else None
    return summary


#: the drift view of a history row (seed's ``semantic_drift`` list): drift, preservation, rate
DRIFT_KEYS = ("drift", "preservation", "rate_bits")
#: what the per-stage loss views leave out (drift metrics have their own view)
_NOT_LOSSES = ("drift", "mae/", "preservation", "classical/", "grid_k/")


def _under(row: Row, prefix: str, starts: tuple[str, ...] = ("",)) -> Row:
    """The row's metrics under ``prefix`` (prefix removed) whose rest starts with ``starts``."""
    return {
        k.removeprefix(prefix): v
        for k, v in row.items()
        if k.startswith(prefix) and k.removeprefix(prefix).startswith(starts)
    }


def _stage_rows(rows: list[Row], stage: str) -> list[Row]:
    """Per epoch, the stage's losses and rates without its prefix (the seed's loss lists)."""
    out = []
    for r in rows:
        vals = {k: v for k, v in _under(r, f"{stage}/").items() if not k.startswith(_NOT_LOSSES)}
        if vals:
            out.append({"epoch": r["epoch"], **vals})
    return out


def optimized_value(cfg: DictConfig, summary: dict[str, Any]) -> float | None:
    """The ``optimized_metric`` at the best epoch; a loud error when it was never logged."""
    key = cfg.get("optimized_metric")
    if not key:
        return None
    value = at_best_epoch(summary, key)
    if value is not None:
        return value
    logged = sorted({k for r in summary["history"] for k in r})
    raise ConfigError(f"optimized_metric={key!r} was never logged; logged metrics: {logged}")


def at_best_epoch(summary: dict[str, Any], key: str) -> float | None:
    """Metric ``key`` in the history row of the summary's best epoch (None if not logged)."""
    for row in summary["history"]:
        if row["epoch"] == summary.get("best_epoch") and key in row:
            return float(row[key])
    return None


def write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    """``summary.json`` in the run directory, written atomically."""
    text = json.dumps(summary, indent=2, default=_json)
    atomic_write(out_dir / "summary.json", lambda tmp: Path(tmp).write_text(text))


def _json(o: Any) -> Any:
    if hasattr(o, "tolist"):  # tensors, numpy values
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def log_final(s: dict[str, Any]) -> None:
    """The run's last lines: where it is, its best epoch, drift, rate, coding and the floor."""
    best = s["best_val_loss"]
    log.info("run directory: %s", s["experiment_dir"])
    log.info(
        "best val/loss: %s at epoch %s (of %s run)",
        f"{best:.4f}" if best is not None else "n/a",
        s["best_epoch"],
        s["epochs_run"],
    )
    if s["drift"] is not None:
        groups = ", ".join(f"{g} {v:.3f}" for g, v in s["drift_groups"].items())
        log.info(
            "semantic drift %.4f (preservation %.4f); by group: %s",
            s["drift"],
            s["preservation"],
            groups,
        )
    if s["rate_bits"] is not None:
        log.info("rate: %.2f bits per state", s["rate_bits"])
    coding = s.get("test_coding")
    if coding:
        log.info(
            "test split really coded (%s): %.2f bits per state (estimated %.2f), %d bytes for %d states",
            " + ".join(coding["coded"]),
            coding["coded_bits_per_state"],
            coding["estimated_bits_per_state"],
            coding["num_bytes"],
            coding["num_states"],
        )
    if s.get("baselines"):
        test = s.get("test") or {}
        bits, drift = test.get("test/rate_bits"), test.get("test/drift")
        model = (
            f"this model: {bits:.1f} bits/state at test drift {drift:.4f}"
            if bits is not None and drift is not None
            else "this model: not tested"
        )
        log.info("%s; %s", describe_baselines(s["baselines"]), model)
