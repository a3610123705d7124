"""Configs read from files are data: the registry of classes they may name, and their checks.

A checkpoint's ``hyper_parameters`` and ``run_config`` and a ``.mtc`` header are written by
whoever sent the file. Hydra's ``instantiate`` builds whatever ``_target_`` it is given (a
``pathlib.Path.write_text`` with arguments writes a file), so nothing read from a file reaches
it before ``Registry.check`` has passed the node:

- its ``_target_`` is a class that the packaged config groups name for that slot, or one the
  user listed in their own config (``trusted_targets``), never one the file brings;
- ``_partial_: true`` only where the packaged configs use it (optimizers, schedulers); no other
  ``_`` key (``_args_``, ``_recursive_``, ...) and no ``_target_`` anywhere below the top;
- every other key is a parameter of that class's constructor, of the annotated type;
- every value is plain data: None, booleans, finite numbers, strings of at most ``MAX_TEXT``
  characters without ``${`` interpolation, lists and string-keyed dicts of those;
- values obey the command line's range rules (``config.RULES``) and, for sizes, ``FILE_LIMITS``
  (a model or data set a file asks for cannot take more memory than these allow).

The user's own command line and YAML are the user's choice and are not checked here.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from meaning_transform.config import CONF_DIR, RULES
from meaning_transform.errors import CheckpointError

#: node slots of a model's hyperparameters and of a run config, and where the packaged config
#: groups put them ("*" is any name)
SLOTS = {
    "model": ("model",),
    "compression": ("compression",),
    "loss_term": ("loss", "terms", "*"),
    "optimizer": ("optimizer",),
    "scheduler": ("scheduler",),
    "data": ("data",),
}
#: config keys that only Hydra reads; a file may use ``_target_`` (checked) and ``_partial_``
#: (where the packaged config does), nothing else
HYDRA_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
MAX_TEXT = 4096
MAX_ITEMS = 4096
MAX_DEPTH = 8
#: the largest value a file may ask for, per key (lists: per element); the project's defaults
#: are far below (model.hidden_dims [256, 128, 64], lossless [64], 10,000 synthetic states)
FILE_LIMITS = {
    "model.latent_dim": 1024,
    "model.hidden_dims": 4096,
    "model.max_bins": 1 << 16,
    "model.basis": 4096,
    "model.delta_window": 4096,
    "compression.num_embeddings": 1 << 16,
    "data.num_states": 2_000_000,
    "data.num_agents": 2_000_000,
    "data.batch_size": 1 << 20,
    "data.eval_batch_size": 1 << 20,
}
MAX_LAYERS = 16


def _package_header(text: str) -> str | None:
    for line in text.splitlines()[:5]:
        if line.strip().startswith("# @package"):
            return line.split("@package", 1)[1].strip()
    return None


def _nodes_at(root: Any, path: tuple[str, ...]) -> Iterable[Any]:
    if not path:
        yield root
        return
    if not isinstance(root, dict):
        return
    head, rest = path[0], path[1:]
    for key, value in root.items():
        if head in ("*", key):
            yield from _nodes_at(value, rest)


@functools.lru_cache(maxsize=4)
def packaged_targets(conf_dir: Path = CONF_DIR) -> dict[str, dict[str, bool]]:
    """Per slot, the ``_target_``s the packaged config groups name, each with whether its
    config is ``_partial_`` (read from ``conf/``: the one source of truth)."""
    found: dict[str, dict[str, bool]] = {slot: {} for slot in SLOTS}
    for path in sorted(conf_dir.rglob("*.yaml")):
        group = path.relative_to(conf_dir).parts[0] if path.parent != conf_dir else None
        text = path.read_text()
        data = yaml.safe_load(text)
        if not isinstance(data, dict) or group is None:
            continue
        root = data if _package_header(text) == "_global_" else {group: data}
        for slot, where in SLOTS.items():
            for node in _nodes_at(root, where):
                if isinstance(node, dict) and isinstance(node.get("_target_"), str):
                    found[slot][node["_target_"]] = node.get("_partial_") is True
    return found


def _refuse(where: str, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: {what}")


def check_plain(value: Any, where: str, depth: int = 0) -> None:
    """CheckpointError unless ``value`` is plain data (see the module docstring)."""
    if depth > MAX_DEPTH:
        raise _refuse(where, f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | str | int | float):
        _check_scalar(value, where)
    elif isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            raise _refuse(where, f"a list of {len(value)} items (at most {MAX_ITEMS})")
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise _refuse(where, f"a mapping of {len(value)} keys (at most {MAX_ITEMS})")
        for k, v in value.items():
            if not isinstance(k, str) or len(k) > MAX_TEXT:
                raise _refuse(where, "a mapping key that is not a short string")
            if k in HYDRA_KEYS:
                raise _refuse(f"{where}.{k}", "refused: a file may not ask for this here")
            check_plain(v, f"{where}.{k}", depth + 1)
    else:
        raise _refuse(where, f"a {type(value).__name__}, not plain data")


def _check_scalar(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise _refuse(where, f"{value} is not a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        raise _refuse(where, "an integer beyond 64 bits")
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise _refuse(where, f"a string of {len(value)} characters (at most {MAX_TEXT})")
        if "${" in value:
            raise _refuse(where, "refused: an interpolation (${...}) in a file's config")


def fits(value: Any, annotation: Any) -> bool:
    """Whether plain ``value`` has the constructor's annotated type (unknown constructs pass:
    the value is plain data already)."""
    if annotation in (inspect.Parameter.empty, Any):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(fits, value, args))
        return not args or all(fits(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _signature(cls: Any) -> inspect.Signature:
    try:
        return inspect.signature(cls, eval_str=True)
    except (NameError, TypeError, SyntaxError):  # annotations that cannot be evaluated: names
        pass
    try:
        return inspect.signature(cls)
    except ValueError:  # a builtin without one (a trusted class): keys cannot be checked
        return inspect.Signature([inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


def _limit_check(key: str, value: Any, where: str) -> None:
    limit = FILE_LIMITS.get(key)
    if limit is None:
        return
    values = value if isinstance(value, list | tuple) else [value]
    if isinstance(value, list | tuple) and len(value) > MAX_LAYERS:
        raise _refuse(where, f"{len(value)} entries (a file may ask for at most {MAX_LAYERS})")
    for v in values:
        if isinstance(v, int | float) and not isinstance(v, bool) and v > limit:
            raise _refuse(where, f"{v} is above {limit:,}, the most a file may ask for")


class Registry:
    """The classes a file's config may name: the packaged ones, plus ``trusted`` (dotted class
    paths the user lists in their own config, usable in any slot)."""

    def __init__(self, trusted: Iterable[str] = ()) -> None:
        self.targets = packaged_targets()
        self.trusted = {str(t) for t in trusted or ()}

    def check(self, slot: str, node: Any, where: str, rules_prefix: str | None = None) -> dict:
        """The node, checked (see the module docstring), as a plain dict; CheckpointError
        naming the field otherwise. ``rules_prefix``: the config key the node sits at, whose
        ``config.RULES`` and ``FILE_LIMITS`` apply (default: the slot's name)."""
        if not isinstance(node, dict):
            raise _refuse(where, f"a {type(node).__name__} where a config mapping belongs")
        target = node.get("_target_")
        known = self.targets[slot]
        if not isinstance(target, str) or (target not in known and target not in self.trusted):
            allowed = ", ".join(sorted(known))
            raise _refuse(
                f"{where}._target_",
                f"{str(target)[:120]!r} is not a class this project builds here (allowed: "
                f"{allowed}; trust another with trusted_targets=[...] in your own config)",
            )
        if "_partial_" in node and not (node["_partial_"] is True and known.get(target)):
            raise _refuse(f"{where}._partial_", "refused: not a partial config here")
        from hydra.utils import get_class  # the target is known: importing it is safe

        params = _signature(get_class(target)).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        prefix = rules_prefix or slot
        for key, value in node.items():
            field = f"{where}.{key}"
            if key in ("_target_", "_partial_"):
                continue
            check_plain({key: value}, where)
            if key not in params and not takes_any:
                raise _refuse(field, f"{target.rsplit('.', 1)[-1]} has no parameter {key!r}")
            if key in params and not fits(value, params[key].annotation):
                raise _refuse(field, f"{value!r:.80} is not of type {params[key].annotation}")
            rule = RULES.get(f"{prefix}.{key}")
            if rule is not None and not rule[0](value):
                raise _refuse(field, f"{value!r:.80} is invalid: expected {rule[1]}")
            _limit_check(f"{prefix}.{key}", value, field)
        return dict(node)

    def check_terms(self, terms: Any, where: str) -> dict[str, dict]:
        """A mapping of name -> loss term node, each checked."""
        if not isinstance(terms, dict) or len(terms) > 64:
            raise _refuse(where, "not a mapping of at most 64 loss terms")
        return {
            str(name): self.check("loss_term", node, f"{where}.{name}")
            for name, node in terms.items()
        }


def plain_mapping(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` as a mapping of plain data (CheckpointError otherwise)."""
    if not isinstance(value, dict):
        raise _refuse(where, f"a {type(value).__name__} where a mapping belongs")
    check_plain(value, where)
    return value
