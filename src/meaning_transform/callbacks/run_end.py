"""The hook after a run's last file: callbacks that report a finished run (e.g. to MLflow)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class RunEndCallback(Callback):
    """A callback that ``training.run`` also tells when the run is complete (rank 0).

    Lightning's hooks end with ``fit`` or ``test``; ``summary.json`` is written after both, so
    whatever reports it (and the best checkpoint, the plots) waits for ``on_run_end``.
    """

    def on_run_end(self, trainer: L.Trainer, summary: dict[str, Any]) -> None:
        """The run's ``summary.json`` (``summary``) and every other output are written."""


def notify_run_end(callbacks: list[Callback], trainer: L.Trainer, summary: dict[str, Any]) -> None:
    """Call ``on_run_end`` of every RunEndCallback among ``callbacks``."""
    for callback in callbacks:
        if isinstance(callback, RunEndCallback):
            callback.on_run_end(trainer, summary)
