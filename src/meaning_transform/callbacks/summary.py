"""One human-readable line per epoch, and one when early stopping ends the run."""

from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

log = logging.getLogger("meaning_transform")


class EpochSummary(Callback):
    """Logs ``epoch | train loss | val loss | drift | bits/state | time`` after each epoch.

    Epochs count from 1, as on the progress bar. When an ``EarlyStopping`` callback stops the
    run, one more line says why: the metric, its best value and epoch, and the patience.
    """

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock."""
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the line (rank 0)."""
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = trainer.callback_metrics

        def fmt(key: str, spec: str = ".4f") -> str:
            return format(float(m[key]), spec) if key in m else "-"

        log.info(
            "epoch %d/%d | train/loss %s | val/loss %s | val/drift %s | %s bits/state | %.1fs",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            fmt("train/loss"),
            fmt("val/loss"),
            fmt("val/drift"),
            fmt("val/rate_bits", ".2f"),
            time.perf_counter() - self._start,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Say why early stopping ended the run, if it did (rank 0)."""
        if not trainer.is_global_zero or not trainer.should_stop:
            return
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if (
                isinstance(cb, EarlyStopping)
                and cb.stopping_reason != EarlyStoppingReason.NOT_STOPPED
            ):
                log.info("%s", early_stop_line(cb, cb.stopped_epoch))


def early_stop_line(cb: EarlyStopping, epoch: int) -> str:
    """Why ``cb`` stopped training after (0-based) ``epoch``, in one line with 1-based epochs."""
    if cb.stopping_reason != EarlyStoppingReason.PATIENCE_EXHAUSTED:
        return f"early stopping after epoch {epoch + 1}: {cb.stopping_reason_message}"
    best_epoch = epoch + 1 - cb.wait_count
    return (
        f"early stopping after epoch {epoch + 1}: {cb.monitor} has not improved by more than "
        f"{abs(cb.min_delta):g} for {cb.wait_count} epochs (patience {cb.patience}); best "
        f"{float(cb.best_score):.4f} at epoch {best_epoch}"
    )
