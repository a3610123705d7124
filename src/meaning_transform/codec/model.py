"""The codec's model: load a lossless checkpoint safely, hash it, embed it in a file.

A file records the SHA-256 of the model (its hyperparameters and every tensor of its state
dict), so decompressing with any other model is refused instead of decoding garbage. Embedded
models are the weights and hyperparameters only, saved with ``torch.save`` and read back with
``weights_only=True`` (no code runs when a file is read).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

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


def model_bytes(module: Any) -> bytes:
    """The model as embedded in a file: hyperparameters and weights only."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": state}, buf)
    return buf.getvalue()


def load_embedded(data: bytes, name: str) -> Any:
    """The model embedded in file ``name``."""
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure is the file's fault
        raise CheckpointError(f"{name}: embedded model cannot be read ({e})") from None
    return _build(ckpt, f"{name} (embedded model)")


def model_hash(module: Any) -> str:
    """SHA-256 of the hyperparameters and every tensor of the state dict."""
    h = hashlib.sha256(json.dumps(dict(module.hparams), sort_keys=True, default=str).encode())
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
