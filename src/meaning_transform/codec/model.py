"""The codec's model: read a lossless checkpoint safely, hash it, embed it in a file.

A file records the SHA-256 of the model (its hyperparameters and every tensor of its state
dict), computed from the checkpoint's data before anything is built, so decompressing with any
other model is refused before it is loaded. A model is rebuilt only through
``model_loading.build_checked`` (known classes, checked fields, bounded size). Embedded models
are the weights and hyperparameters only, saved with ``torch.save`` and read back with
``weights_only=True`` from a checked archive (no code runs, nothing bigger than the file).
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from meaning_transform.checkpoint_reader import load_safely, read_checkpoint
from meaning_transform.errors import CheckpointError
from meaning_transform.model_loading import build_checked, load_weights
from meaning_transform.registry import Registry


def build_model(ckpt: dict[str, Any], where: str, trusted: Any = ()) -> Any:
    """A lossless MeaningModule from a checkpoint dict whose fields are checked first."""
    module = build_checked(ckpt.get("hyper_parameters"), where, Registry(trusted))
    if not hasattr(module.codec, "code_state"):
        raise CheckpointError(
            f"{where} is not a lossless model: train one with compression=lossless"
        )
    return load_weights(module, ckpt, where)


def read_model(path: str | Path) -> tuple[dict[str, Any], str]:
    """(checkpoint dict, its model hash) of a checkpoint file, nothing built."""
    ckpt = read_checkpoint(path)
    return ckpt, checkpoint_hash(ckpt, f"checkpoint {str(path)!r}")


def model_bytes(module: Any) -> bytes:
    """The model as embedded in a file: hyperparameters and weights only."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": state}, buf)
    return buf.getvalue()


def read_embedded(data: bytes, name: str) -> dict[str, Any]:
    """The checkpoint dict embedded in file ``name`` (the archive is checked like a file's)."""
    with tempfile.NamedTemporaryFile(suffix=".ckpt") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            ckpt = load_safely(tmp.name)
        except CheckpointError as e:
            raise CheckpointError(
                f"{name}: embedded model cannot be read ({str(e).split(': ', 1)[-1]})"
            ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{name}: embedded model is not a checkpoint")
    return ckpt


def checkpoint_hash(ckpt: dict[str, Any], where: str) -> str:
    """SHA-256 of a checkpoint dict's hyperparameters and every tensor of its state dict."""
    hp, state = ckpt.get("hyper_parameters"), ckpt.get("state_dict")
    if not isinstance(hp, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{where} holds no hyperparameters and state_dict")
    try:
        h = hashlib.sha256(json.dumps(hp, sort_keys=True, default=str).encode())
    except (TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{where}: hyperparameters are not plain data ({e})") from None
    for key in sorted(state, key=str):
        value = state[key]
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: state_dict entry {str(key)[:60]!r} is not a tensor")
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def model_hash(module: Any) -> str:
    """``checkpoint_hash`` of a built module (its hyperparameters and state dict)."""
    ckpt = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    return checkpoint_hash(ckpt, "model")
