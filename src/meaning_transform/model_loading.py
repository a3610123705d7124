"""A MeaningModule rebuilt from a file: every field checked first, then built, then loaded.

A checkpoint's (or an embedded model's) ``hyper_parameters`` are data from whoever wrote the
file. ``checked_hparams`` validates them field by field through the ``Registry`` (known classes
only, constructor parameters of the right types, the command line's range rules, file size
limits), estimates the model's size before anything is allocated, and only then does
``build_checked`` construct the module. ``load_module`` adds the weights after their names and
shapes are compared with the built model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meaning_transform.checkpoint_reader import check_compatible, read_checkpoint
from meaning_transform.config import RULES
from meaning_transform.errors import CheckpointError, SchemaError
from meaning_transform.registry import Registry, check_plain

HPARAM_KEYS = (
    "schema",
    "model",
    "compression",
    "loss",
    "optimizer",
    "scheduler",
    "seed",
    "objective_beta",
)
#: constructor arguments MeaningModule passes itself: a file may not set them
RESERVED = {
    "model": ("input_dim", "output_dim", "grid_dim", "schema", "context_dim"),
    "compression": ("latent_dim",),
    "optimizer": ("params",),
    "scheduler": ("optimizer",),
}
MAX_FEATURES = 256
MAX_CATEGORIES = 4096
#: the most float elements (parameters and buffers, estimated from the config) a model read
#: from a file may have: 64M = 256 MB in float32 (the default models have ~0.1M)
MAX_ELEMENTS = 64_000_000


def checked_hparams(hp: Any, where: str, registry: Registry) -> dict[str, Any]:
    """``hp`` validated for ``MeaningModule(**hp)``; CheckpointError (one line naming the
    field) otherwise. Builds nothing."""
    if not isinstance(hp, dict):
        raise CheckpointError(f"{where} holds no hyperparameters (not a meaning-transform model)")
    unknown = sorted(str(k)[:40] for k in hp if k not in HPARAM_KEYS)
    if unknown or "schema" not in hp or "model" not in hp:
        raise CheckpointError(
            f"{where}: hyper_parameters have unknown keys {unknown} or lack schema/model"
        )
    out: dict[str, Any] = {"schema": _checked_schema(hp["schema"], f"{where}: schema")}
    model = _node(hp["model"], f"{where}: model")
    grid = model.pop("grid_path", None)
    out["model"] = _slot(registry, "model", model, f"{where}: model")
    if grid is not None:
        check_plain(grid, f"{where}: model.grid_path")
        _grid_rules(grid, f"{where}: model.grid_path")
        out["model"]["grid_path"] = grid
    out["compression"] = _slot(
        registry, "compression", hp.get("compression"), f"{where}: compression"
    )
    out["loss"] = _checked_loss(hp.get("loss"), f"{where}: loss", registry)
    out["optimizer"] = _slot(registry, "optimizer", hp.get("optimizer"), f"{where}: optimizer")
    scheduler = hp.get("scheduler")
    out["scheduler"] = (
        None
        if scheduler is None
        else _slot(registry, "scheduler", scheduler, f"{where}: scheduler")
    )
    seed = hp.get("seed")
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool)):
        raise CheckpointError(f"{where}: seed {seed!r:.40} is not an integer")
    if seed is not None and not 0 <= seed < 2**32:
        raise CheckpointError(f"{where}: seed {seed} is outside [0, 2**32)")
    out["seed"] = seed
    beta = hp.get("objective_beta")
    check_plain(beta, f"{where}: objective_beta")
    if beta is not None and not (isinstance(beta, int | float) and beta >= 0):
        raise CheckpointError(f"{where}: objective_beta {beta!r:.40} is not a number >= 0")
    out["objective_beta"] = beta
    _check_size(out, where)
    return out


def _node(node: Any, where: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise CheckpointError(f"{where}: a {type(node).__name__} where a config mapping belongs")
    return dict(node)


def _slot(registry: Registry, slot: str, node: Any, where: str) -> dict[str, Any]:
    node = _node(node, where)
    for key in RESERVED.get(slot, ()):
        if key in node:
            raise CheckpointError(f"{where}.{key}: refused: set by the model itself, not a file")
    return registry.check(slot, node, where)


def _grid_rules(grid: dict[str, Any], where: str) -> None:
    for key, value in grid.items():
        rule = RULES.get(f"model.grid_path.{key}")
        if rule is None:
            raise CheckpointError(f"{where}.{key}: not a grid path setting")
        if not rule[0](value):
            raise CheckpointError(f"{where}.{key}: {value!r:.60} is invalid: expected {rule[1]}")


def _checked_loss(loss: Any, where: str, registry: Registry) -> dict[str, Any]:
    loss = _node(loss, where)
    terms = loss.pop("terms", None) or {}
    check_plain(loss, where)
    for key, value in loss.items():
        rule = RULES.get(f"loss.{key}")
        if rule is not None and not rule[0](value):
            raise CheckpointError(f"{where}.{key}: {value!r:.60} is invalid: expected {rule[1]}")
    return {**loss, "terms": registry.check_terms(terms, f"{where}.terms")}


def _checked_schema(schema: Any, where: str) -> dict[str, Any]:
    """The schema config, built once to check it (types, values, counts)."""
    from meaning_transform.schema import FeatureSchema

    schema = _node(schema, where)
    check_plain(schema, where)
    features = schema.get("features")
    if not isinstance(features, dict) or not 0 < len(features) <= MAX_FEATURES:
        raise CheckpointError(f"{where}: features must be a mapping of 1..{MAX_FEATURES}")
    for name, spec in features.items():
        cats = (spec or {}).get("categories") if isinstance(spec, dict) else None
        if isinstance(cats, list) and len(cats) > MAX_CATEGORIES:
            raise CheckpointError(
                f"{where}: feature {name!r:.40} has over {MAX_CATEGORIES} categories"
            )
    try:
        built = FeatureSchema.from_config(schema)
        built.require_fitted()
        built.input_dim  # noqa: B018 - every categorical has its vocabulary
    except (SchemaError, TypeError, ValueError, KeyError, AssertionError) as e:
        raise CheckpointError(f"{where}: {str(e).splitlines()[0][:200]}") from None
    return schema


def _check_size(hp: dict[str, Any], where: str) -> None:
    """CheckpointError when the model the config describes would exceed MAX_ELEMENTS."""
    from meaning_transform.schema import FeatureSchema

    schema = FeatureSchema.from_config(hp["schema"])
    model = hp["model"]
    hidden = [int(h) for h in model.get("hidden_dims") or [256, 128, 64]]
    latent = int(model.get("latent_dim") or 32)
    inp = schema.input_dim
    ctx = 2 * inp + 1 + 2 * len(schema.features) if model.get("context") else 0
    enc = [inp + ctx, *hidden, latent]
    dec = [latent + ctx + len(schema.features), *reversed(hidden), schema.head_dim]
    elements = sum(a * b for dims in (enc, dec) for a, b in zip(dims, dims[1:], strict=False))
    features = len(schema.features)
    bins = int(model.get("max_bins") or 0)
    if bins:  # lossless heads: coefficients and the dense cosine basis over every bin
        basis = min(int(model.get("basis") or bins), bins) * features
        elements += hidden[0] * (basis + features) + basis * bins * features
    elements += int(hp["compression"].get("num_embeddings") or 0) * latent
    filters = hp["compression"].get("filters") or ()
    elements += latent * sum(int(f) for f in filters) ** 2
    if elements > MAX_ELEMENTS:
        raise CheckpointError(
            f"{where}: the model it describes has ~{elements:,} elements, more than the "
            f"{MAX_ELEMENTS:,} a model read from a file may have"
        )


def build_checked(hp: Any, where: str, registry: Registry) -> Any:
    """``MeaningModule(**hp)`` after ``checked_hparams``; a constructor's refusal is one line."""
    from meaning_transform.module import MeaningModule

    checked = checked_hparams(hp, where, registry)
    try:
        return MeaningModule(**checked)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: {str(e).splitlines()[0][:200]}") from None


def load_weights(module: Any, ckpt: dict[str, Any], where: str) -> Any:
    """Load the checkpoint's weights into ``module`` (names and shapes checked); eval mode."""
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{where} holds no state_dict")
    check_compatible(module, ckpt, where)
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    return module


def load_module(
    path: str | Path, trusted: Any = (), map_location: Any = "cpu", ckpt: dict | None = None
) -> Any:
    """A MeaningModule from checkpoint ``path`` (read weights-only), built only after its
    hyperparameters pass ``checked_hparams``; ``trusted``: extra classes the user allows."""
    where = f"checkpoint {str(path)!r}"
    ckpt = read_checkpoint(path, map_location) if ckpt is None else ckpt
    module = build_checked(ckpt.get("hyper_parameters"), where, Registry(trusted))
    module.run_config = ckpt.get("run_config") if isinstance(ckpt.get("run_config"), dict) else None
    return load_weights(module, ckpt, where)
