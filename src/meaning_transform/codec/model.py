"""The codec's float model: a lossless checkpoint, loaded safely (``weights_only=True``).

``compress`` computes the latents with it and exports its integer coding model
(``models/integer_export.py``), which is what a file carries and what decodes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meaning_transform.checkpoint_reader import check_compatible, read_checkpoint
from meaning_transform.errors import CheckpointError


def _build(ckpt: dict[str, Any], where: str) -> Any:
    from meaning_transform.module import MeaningModule

    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict):
        raise CheckpointError(f"{where} holds no hyperparameters (not a meaning-transform model)")
    module = MeaningModule(**hp)
    if not hasattr(module.codec, "code_state"):
        raise CheckpointError(
            f"{where} is not a lossless model: train one with compression=lossless"
        )
    check_compatible(module, ckpt, where)
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    return module


def load_model(path: str | Path) -> Any:
    """A lossless MeaningModule from a checkpoint (CheckpointError, one line, otherwise)."""
    return _build(read_checkpoint(path), f"checkpoint {str(path)!r}")
