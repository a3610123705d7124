"""The codec's float model: read a lossless checkpoint safely and hash it.

A model is rebuilt only through ``model_loading.build_checked`` (known classes, checked fields,
bounded size). ``compress`` computes its integer coding model (``models/integer_export.py``),
which is what a file names by SHA-256, carries (``embed_model``) and decodes with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from meaning_transform.checkpoint_reader import read_checkpoint
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
