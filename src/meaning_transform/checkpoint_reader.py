"""Reading checkpoints safely, with clear errors, and checking that one fits the configured model.

Every checkpoint is loaded with ``torch.load(weights_only=True)``: only tensors and plain
containers (dict, list, tuple, str, numbers, None) are unpickled, so a file cannot run code when
it is read. Everything this project and Lightning store in a checkpoint (weights, optimizer and
scheduler states, loops, callback states, hyperparameters, the run config, history, lineage) is
plain data; a checkpoint that needs any other type is rejected with a CheckpointError.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meaning_transform.errors import CheckpointError
from meaning_transform.messages import few, one_line

if TYPE_CHECKING:  # imported in load_safely: a missing file is reported without torch
    import torch


def load_safely(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; CheckpointError (one line) for anything else."""
    p = Path(path)
    if not p.is_file():
        what = "is not a regular file" if p.exists() else "does not exist"
        raise CheckpointError(f"checkpoint {str(p)!r} {what}")
    _check_archive(p)
    import torch

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": not one line
            warnings.simplefilter("ignore")
            loaded = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"checkpoint {str(p)!r} refused: it needs {found.group(1)}, which a checkpoint of "
                "this project never holds (only tensors and plain containers are loaded, so "
                "loading a file cannot run code)"
            ) from None
        raise _unreadable(p, _unpickler_detail(e)) from None
    except Exception as e:  # noqa: BLE001 - any failure to parse the file is the file's fault
        raise _unreadable(p, one_line(e)) from None
    _check_walkable(loaded, p, torch)
    return loaded


#: most containers, scalars and tensors a checkpoint may hold when walked (shared references
#: counted every time they are met: a list that holds one list 4,096 times, nested, is small in
#: the file and endless to walk; ours hold a few thousand)
MAX_NODES = 1_000_000


def _check_walkable(obj: Any, path: Path, torch: Any) -> None:
    """CheckpointError unless walking ``obj`` (as hashing or validating it does) visits at most
    MAX_NODES items, and no tensor claims more elements than its storage holds (a view with a
    zero stride is a few bytes in the file and any size once materialized)."""
    stack, seen = [obj], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise _unreadable(path, f"it holds more than {MAX_NODES:,} items when walked")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set):
            stack.extend(item)
        elif isinstance(item, torch.Tensor):
            storage = item.untyped_storage().nbytes() // max(item.element_size(), 1)
            if item.numel() > storage:
                raise _unreadable(path, "a tensor is larger than the storage it is a view of")


#: most entries a checkpoint archive may list (ours hold a few hundred: one per tensor)
MAX_ENTRIES = 100_000


def _check_archive(path: Path) -> None:
    """CheckpointError unless ``path`` is a zip archive as ``torch.save`` writes it: entries
    stored uncompressed, their sizes adding up to at most the file's (so reading it cannot
    allocate more than the file holds: no decompression bomb, no legacy raw pickle)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise _unreadable(path, f"not a zip archive as torch.save writes ({one_line(e)})") from None
    size = path.stat().st_size
    if len(infos) > MAX_ENTRIES or sum(i.file_size for i in infos) > size:
        raise _unreadable(path, "its entries claim more bytes than the file holds")
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
        raise _unreadable(path, "compressed entries (torch.save stores them uncompressed)")


def _unreadable(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {str(path)!r} cannot be read (truncated, not a checkpoint, or not plain "
        f"data): {detail}"
    )


def _unpickler_detail(error: Exception) -> str:
    """The informative line of torch's multi-paragraph weights-only error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [
        line for line in lines if not line.startswith(("Weights only", "Please file", "Check"))
    ]
    return (useful or lines or [type(error).__name__])[0]


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a Lightning checkpoint dict (on CPU); CheckpointError if missing, unsafe or foreign."""
    ckpt = load_safely(path, map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{str(path)!r} is not a meaning-transform checkpoint (no state_dict)"
        )
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
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit the configured model: "
            f"{few(problems, 8, sep='; ')}{hint}"
        )


#: settings added after checkpoints were written with the defaults they had then: a checkpoint
#: that lacks one was trained with this value (and resumes with it given)
PREDATED = {"compression.usage_weight": 0.0, "model.grid_path.prior_mixture": False}


def _hparam_hint(theirs: dict[str, Any], ours: Any) -> str:
    diffs, fixes = [], []
    for group in ("model", "compression"):
        a, b = _flat(theirs.get(group) or {}, group), _flat(dict(ours.get(group) or {}), group)
        for k in sorted(set(a) | set(b)):
            if k not in a and k in PREDATED:
                if b[k] != PREDATED[k]:
                    fixes.append(f"{k}={str(PREDATED[k]).lower()}")
            elif a.get(k) != b.get(k):
                diffs.append(f"{k}: checkpoint {a.get(k)!r}, config {b.get(k)!r}")
    hint = f" (config differs: {', '.join(diffs)})" if diffs else ""
    if fixes:
        hint += f"; the checkpoint predates {', '.join(f.split('=')[0] for f in fixes)}: "
        hint += f"resume with {' '.join(fixes)}"
    return hint


def _flat(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Nested settings as ``{"group.key.sub": value}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}.{k}"))
        else:
            out[f"{prefix}.{k}"] = v
    return out
