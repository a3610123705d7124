"""Per-epoch metric history: kept in checkpoints, written as CSV, returned by the Python API."""

from __future__ import annotations

import csv
import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from meaning_transform.io import atomic_write

Row = dict[str, float]


class EpochRecorder(Callback):
    """One row per epoch of the logged metrics ``select`` keeps (plus ``lr``, epoch time).

    ``epoch`` in a row counts epochs completed (1-based, as in ``epoch_010.ckpt``). The rows live
    in checkpoints, so a resumed run's CSV and plots cover every epoch.
    """

    prefixes: tuple[str, ...] = ("train/", "val/")

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.rows: list[Row] = []
        self._epoch_start = time.perf_counter()
        self._resumed_epochs: int | None = None  # epochs completed in the checkpoint resumed

    # -------------------------------------------------------------- recording
    def select(self, metrics: dict[str, float]) -> Row:
        """The metrics this history keeps, under the names it writes."""
        return {k: v for k, v in metrics.items() if k.startswith(self.prefixes)}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the epoch clock."""
        self._epoch_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the epoch (runs before ModelCheckpoint, so checkpoints include this row)."""
        self._record(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record epochs without validation."""
        self._record(trainer)

    def _record(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        epoch = trainer.current_epoch + 1
        if self.rows and self.rows[-1]["epoch"] == epoch:
            return
        metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items()}
        row: Row = {"epoch": epoch, "step": trainer.global_step}
        if trainer.optimizers:
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        row["epoch_time_s"] = time.perf_counter() - self._epoch_start
        row.update(self.select(metrics))
        self.rows.append(row)
        if trainer.is_global_zero and self.path:
            write_csv(self.path, self.rows)

    # -------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Rows travel inside checkpoints."""
        return {"rows": [dict(r) for r in self.rows]}

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Note how many epochs the checkpoint completed (Lightning calls load_state_dict next)."""
        self._resumed_epochs = int(checkpoint.get("epoch", -1)) + 1

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore rows from a checkpoint, none after the epoch it was written at."""
        rows = [dict(r) for r in state_dict.get("rows", [])]
        if self._resumed_epochs is not None:
            rows = [r for r in rows if r["epoch"] <= self._resumed_epochs]
        self.rows = rows

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After a resume, rewrite the CSV now: rows of epochs the checkpoint lacks are dropped.

        (A run killed after writing an epoch's row but before its checkpoint leaves that row.)
        """
        if self._resumed_epochs is not None and trainer.is_global_zero and self.path:
            write_csv(self.path, self.rows)


class MetricsHistory(EpochRecorder):
    """Every ``train/*`` and ``val/*`` metric per epoch: what summaries and plots read."""


class SemanticDriftTracker(EpochRecorder):
    """Drift history: overall, per group, per feature/predicate, preservation, rate (validation)."""

    prefixes = ("val/drift", "val/preservation", "val/rate_bits")

    def select(self, metrics: dict[str, float]) -> Row:
        """Validation drift metrics without the ``val/`` prefix."""
        return {k.removeprefix("val/"): v for k, v in super().select(metrics).items()}


def find_history(callbacks: list[Callback]) -> MetricsHistory | None:
    """The run's MetricsHistory among ``callbacks`` (None when it has none)."""
    return next((cb for cb in callbacks if isinstance(cb, MetricsHistory)), None)


def _scalar(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def write_csv(path: str, rows: list[Row]) -> None:
    """Write rows (union of their keys as columns, first-seen order) atomically."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), restval="")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _fmt(v) for k, v in row.items()})

    atomic_write(path, write)


def _fmt(v: float) -> Any:
    return int(v) if isinstance(v, int) else f"{v:.8g}"
