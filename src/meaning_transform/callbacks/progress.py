"""One training progress bar, epochs counted from 1, that log lines print above, not into."""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf
from tqdm.contrib.logging import logging_redirect_tqdm


class EpochProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, reduced to one bar for the training epochs.

    ``Epoch 2/25`` (from 1, of ``max_epochs``); no validation, sanity or test bars (they are a
    single fast pass, and their lines were what broke the console); while the bar is shown, log
    records go through ``tqdm.write`` so the per-epoch lines land above it. When stdout is not a
    terminal (a log file, a pipe, CI) the bar is off: the per-epoch lines are the progress.
    """

    def __init__(self, refresh_rate: int = 20, force: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=False)
        self.force = force  # show the bar even when stdout is not a terminal
        self._redirect: ExitStack | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Turn the bar off when nobody watches a terminal."""
        super().setup(trainer, pl_module, stage)
        if not (self.force or sys.stdout.isatty()):
            self.disable()

    def _off(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_sanity_tqdm(self) -> Tqdm:
        """No sanity-check bar."""
        return self._off()

    def init_validation_tqdm(self) -> Tqdm:
        """No validation bar: the epoch line reports validation."""
        return self._off()

    def init_test_tqdm(self) -> Tqdm:
        """No test bar: the final lines report the test split."""
        return self._off()

    def init_train_tqdm(self) -> Tqdm:
        """The one bar; it disappears when training ends, leaving the epoch lines."""
        bar = super().init_train_tqdm()
        bar.leave = False
        return bar

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Create the bar and route console log records above it."""
        super().on_train_start(trainer, pl_module)
        if self.is_enabled:
            self._redirect = ExitStack()
            loggers = [logging.root, logging.getLogger("lightning.pytorch")]
            self._redirect.enter_context(logging_redirect_tqdm(loggers=loggers))

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Reset the bar; count epochs from 1."""
        bar = self.train_progress_bar
        bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", False)
        bar.reset(total=convert_inf(self.total_train_batches))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close the bar and give the console handlers back."""
        super().on_train_end(trainer, pl_module)
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Give the console handlers back when training fails."""
        self._restore()

    def _restore(self) -> None:
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The bar's postfix without Lightning's logger version number."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (DDP spawn): without the open redirection."""
        state = super().__getstate__()
        state["_redirect"] = None
        return state
