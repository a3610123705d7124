"""Checkpointing: atomic writes, best/last, periodic epoch_NNN files, resume into a new run dir."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from meaning_transform.checkpoint_reader import read_checkpoint
from meaning_transform.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic saves (temp file, fsync, rename) and safe loads (``weights_only=True``).

    A killed process never leaves a truncated .ckpt, and ``Trainer.fit/test(ckpt_path=...)``
    never unpickles anything but tensors and plain containers.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically."""

        def write(tmp: str) -> None:
            # Serialized in memory first: torch's zip writer reports a failed write (a full
            # disk) as an obscure RuntimeError, a plain file write as the OSError it is.
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            with open(tmp, "wb") as fh:
                fh.write(buffer.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())

        atomic_write(path, write)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load with ``weights_only=True`` whatever the caller asks (CheckpointError if unsafe)."""
        return read_checkpoint(path, map_location=map_location or "cpu")


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt``: the model with the best monitored value so far.

    Resuming into a new run directory keeps the best score and copies the previous ``best.ckpt``
    into it, so a resumed run only replaces it with a better model and its directory is complete.
    The path to copy is read from the resumed checkpoint, so it is only followed when it is the
    ``best.ckpt`` beside that checkpoint (``resumed_from``, set before ``fit``): a checkpoint
    cannot make a run copy any other file.
    """

    resumed_from: Path | None = None

    def __init__(self, dirpath: str, monitor: str = "val/loss", mode: str = "min") -> None:
        super().__init__(
            dirpath=dirpath,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
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
        self.best_model_path = ""
        if score is None or not self._is_sibling_best(old_best):
            return
        new_best = os.path.join(str(self.dirpath), "best.ckpt")
        if rank_zero_only.rank == 0:
            atomic_write(new_best, lambda tmp: shutil.copyfile(old_best, tmp))
        self.best_model_path = self.kth_best_model_path = new_best
        self.best_k_models = {new_best: score}
        self.kth_value = score

    def _is_sibling_best(self, path: object) -> bool:
        """Whether ``path`` is the ``best.ckpt`` file beside the resumed checkpoint."""
        if not isinstance(path, str) or self.resumed_from is None:
            return False
        expected = self.resumed_from.parent / "best.ckpt"
        return os.path.isfile(path) and expected.is_file() and os.path.samefile(path, expected)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``, rewritten at the end of every training epoch.

    (Lightning's ``save_last`` only writes when another checkpoint is written, i.e. not in
    epochs that do not improve the monitored metric.)
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
        )


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
