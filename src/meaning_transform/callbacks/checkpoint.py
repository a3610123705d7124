"""Checkpointing: atomic writes, best/last, periodic epoch_NNN files, resume into a new run dir."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file, fsync, rename: a killed process never leaves a truncated .ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically."""

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())

        atomic_write(path, write)


class BestAndLastCheckpoint(ModelCheckpoint):
    """``best.ckpt`` (best monitored value) and ``last.ckpt`` (every epoch).

    Resuming into a new run directory keeps the best score and copies the previous ``best.ckpt``
    into it, so a resumed run only replaces it with a better model and its directory is complete.
    """

    def __init__(self, dirpath: str, monitor: str = "val/loss", mode: str = "min") -> None:
        super().__init__(
            dirpath=dirpath,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=True,
            auto_insert_metric_name=False,
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore bookkeeping; from another directory, carry the best checkpoint over."""
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            super().load_state_dict(state_dict)
            return
        score = state_dict.get("best_model_score")
        old_best = state_dict.get("best_model_path") or ""
        self.best_model_score = score
        self.best_model_path = old_best
        if score is None or not os.path.isfile(old_best):
            return
        new_best = os.path.join(str(self.dirpath), "best.ckpt")
        if rank_zero_only.rank == 0:
            atomic_write(new_best, lambda tmp: shutil.copyfile(old_best, tmp))
        self.best_model_path = self.kth_best_model_path = new_best
        self.best_k_models = {new_best: score}
        self.kth_value = score


class PeriodicCheckpoint(ModelCheckpoint):
    """``epoch_010.ckpt``, ``epoch_020.ckpt``, ... every ``every_n_epochs`` (1-based epoch count)."""

    def __init__(self, dirpath: str, every_n_epochs: int = 10) -> None:
        if every_n_epochs < 1:
            raise ValueError(
                f"callbacks.periodic_checkpoint.every_n_epochs must be >= 1, got {every_n_epochs}"
            )
        super().__init__(
            dirpath=dirpath,
            filename="epoch_{epoch:03d}",
            monitor=None,
            save_top_k=-1,
            every_n_epochs=every_n_epochs,
            auto_insert_metric_name=False,
        )

    def format_checkpoint_name(self, metrics: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        """Name by epochs completed (Lightning's ``epoch`` is 0-based)."""
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": int(metrics["epoch"]) + 1}
        return super().format_checkpoint_name(metrics, *args, **kwargs)
