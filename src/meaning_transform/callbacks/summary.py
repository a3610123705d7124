"""One human-readable line per epoch."""

from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("meaning_transform")


class EpochSummary(Callback):
    """Logs ``epoch | train loss | val loss | drift | bits/state | time`` after each epoch."""

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
