"""Reading checkpoints with clear errors, and checking that one fits the configured model."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from meaning_transform.errors import CheckpointError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint dict on CPU; CheckpointError if missing, truncated or foreign."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"checkpoint {str(p)!r} cannot be read (truncated or not a checkpoint): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{str(p)!r} is not a meaning-transform checkpoint (no state_dict)")
    return ckpt


def check_compatible(module: torch.nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """CheckpointError listing every key whose presence or shape differs from the model's."""
    theirs: dict[str, torch.Tensor] = ckpt["state_dict"]
    ours = module.state_dict()
    problems = []
    for key in sorted(set(ours) | set(theirs)):
        if key not in theirs:
            problems.append(f"{key} (missing in checkpoint)")
        elif key not in ours:
            problems.append(f"{key} (not in configured model)")
        elif tuple(ours[key].shape) != tuple(theirs[key].shape):
            problems.append(
                f"{key} (checkpoint {list(theirs[key].shape)} vs model {list(ours[key].shape)})"
            )
    if problems:
        hint = _hparam_hint(ckpt.get("hyper_parameters") or {}, getattr(module, "hparams", {}))
        shown = "; ".join(problems[:8]) + (
            f"; ... {len(problems) - 8} more" if len(problems) > 8 else ""
        )
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit the configured model: {shown}{hint}"
        )


def _hparam_hint(theirs: dict[str, Any], ours: Any) -> str:
    diffs = []
    for group in ("model", "compression"):
        a, b = theirs.get(group) or {}, dict(ours.get(group) or {})
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                diffs.append(f"{group}.{k}: checkpoint {a.get(k)!r}, config {b.get(k)!r}")
    return f" (config differs: {', '.join(diffs)})" if diffs else ""
