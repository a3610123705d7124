"""The schema's table codec (numpy): fit a schema to a table, check tables, encode and decode.

A table is a dict of column name -> numpy array, as the data layer reads it from SQLite or
generates it. ``fit`` learns what the declaration leaves open (vocabularies, normalization,
which optional features the data can fill); ``encode`` / ``decode`` map tables to the float32
data tensor of ``schema.declaration``'s layout and back.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from meaning_transform.errors import SchemaError
from meaning_transform.messages import few
from meaning_transform.schema.declaration import (
    INVALID_VALUES,
    Feature,
    FeatureSchema,
    Normalizer,
    Predicate,
    Table,
)

log = logging.getLogger("meaning_transform.schema")


def fit(schema: FeatureSchema, table: Table, valid: bool = False) -> FeatureSchema:
    """Fitted copy of ``schema``: drop unusable optional features, learn vocabularies and
    normalization. ``valid``: the caller has already scanned ``table`` for invalid values."""
    kept = []
    for f in schema.features:
        if f.name not in table:
            if f.optional:
                log.info("optional feature %r dropped: column not in the data", f.name)
                continue
            raise SchemaError(f"required column {f.name!r} missing; columns found: {sorted(table)}")
        col = table[f.name]
        if f.optional and is_unusable(col):
            log.info("optional feature %r dropped: column is entirely NULL or constant", f.name)
            continue
        kept.append(f)
    fitted: list[Feature] = []
    normalizers: dict[str, Normalizer] = {}
    for f in kept:
        col = table[f.name]
        if f.kind == "categorical" and f.categories is None:
            have = present(col)
            values = distinct_str(col if have.all() else col[have])
            f = replace(f, categories=tuple(values.tolist()))
        if f.kind == "continuous":
            vals = np.asarray(col, dtype=np.float64)
            finite = np.isfinite(vals)
            if not finite.all():
                vals = vals[finite]
            mean = float(vals.mean()) if vals.size else 0.0
            std = float(vals.std()) if vals.size else 1.0
            # A constant column keeps std 1 so encode/decode stay exact inverses.
            whole = bool(vals.size) and bool(np.all(vals == np.round(vals)))
            normalizers[f.name] = Normalizer(
                mean, std if std > 1e-12 else 1.0, 1.0 if whole else 0.0
            )
        fitted.append(f)
    out = FeatureSchema(tuple(fitted), _kept_predicates(schema, fitted), normalizers, True)
    check(out, table, values=not valid)
    return out


def _kept_predicates(schema: FeatureSchema, kept: list[Feature]) -> tuple[Predicate, ...]:
    names = {f.name for f in kept}
    out = []
    for p in schema.predicates:
        if p.feature in names:
            out.append(p)
        else:
            log.info("predicate %r dropped: its feature %r was dropped", p.name, p.feature)
    return tuple(out)


# ----------------------------------------------------------------- validation
def invalid_rows(schema: FeatureSchema, table: Table) -> dict[str, np.ndarray]:
    """Per feature, the mask of rows with an invalid value (see INVALID_VALUES), if any."""
    bad = {}
    for f in schema.features:
        if f.name not in table:
            continue
        have = present(table[f.name])
        mask = ~have | f.out_of_range(table[f.name], have)
        if mask.any():
            bad[f.name] = mask
    return bad


def check(schema: FeatureSchema, table: Table, values: bool = True) -> None:
    """Raise SchemaError naming the problem if ``table`` cannot be encoded.

    ``values=False`` skips the scan for invalid values (the data layer scans once and drops or
    rejects those rows itself); columns, binary values and vocabularies are always checked.
    """
    missing = [f.name for f in schema.features if f.name not in table]
    if missing:
        raise SchemaError(f"required column(s) {missing} missing; columns found: {sorted(table)}")
    bad = invalid_rows(schema, table) if values else {}
    if bad:
        detail = ", ".join(f"{k}: {int(v.sum())} rows" for k, v in bad.items())
        raise SchemaError(
            f"{INVALID_VALUES} values in required columns ({detail}); "
            "fix the data or set data.drop_invalid=true to drop those rows"
        )
    for f in schema.of_kind("binary"):
        vals = np.asarray(table[f.name], dtype=np.float64)
        if ((vals != 0.0) & (vals != 1.0)).any():
            vals = np.unique(vals)
            raise SchemaError(
                f"binary column {f.name!r} holds values other than 0/1: {vals[:5].tolist()}"
            )
    if schema.fitted:
        for f in schema.of_kind("categorical"):
            assert f.categories is not None
            vals = distinct_str(table[f.name])
            unseen = sorted(set(vals.tolist()) - set(f.categories))
            if unseen:
                raise SchemaError(
                    f"categorical column {f.name!r} has {len(unseen)} value(s) not in its "
                    f"vocabulary ({few(map(repr, unseen))}; vocabulary: "
                    f"{few(map(repr, f.categories))}); list them in "
                    f"schema.features.{f.name}.categories"
                )


# ----------------------------------------------------------------- encode / decode


def encode(schema: FeatureSchema, table: Table, valid: bool = False) -> torch.Tensor:
    """Table of native values -> float32 data tensor [N, n_features] (``valid``: see ``fit``)."""
    schema.require_fitted()
    check(schema, table, values=not valid)
    n = len(table[schema.features[0].name])
    out = np.empty((n, len(schema.features)), dtype=np.float32)
    scratch = np.empty(n, dtype=np.float64)
    for i, f in enumerate(schema.features):
        col = table[f.name]
        if f.kind == "continuous":
            norm = schema.normalizers[f.name]
            np.subtract(np.asarray(col, dtype=np.float64), norm.mean, out=scratch)
            out[:, i] = np.divide(scratch, norm.std, out=scratch)
        elif f.kind == "binary":
            out[:, i] = col.astype(np.float32)
        else:
            out[:, i] = _category_index(col, f.categories)
    return torch.from_numpy(out)


def decode(schema: FeatureSchema, x: torch.Tensor) -> Table:
    """Data tensor -> table of native values (categories as strings)."""
    schema.require_fitted()
    arr = x.detach().cpu().to(torch.float64).numpy()
    table: Table = {}
    for i, f in enumerate(schema.features):
        col = arr[:, i]
        if f.kind == "continuous":
            norm = schema.normalizers[f.name]
            table[f.name] = col * norm.std + norm.mean
        elif f.kind == "binary":
            table[f.name] = col >= 0.5
        else:
            assert f.categories is not None
            idx = np.clip(np.rint(col), 0, len(f.categories) - 1).astype(np.int64)
            table[f.name] = np.asarray(f.categories, dtype=object)[idx]
    return table


def present(col: np.ndarray) -> np.ndarray:
    """Boolean mask of rows holding a usable value (not None/NaN/inf).

    Vectorized for every dtype: numbers by ``isfinite``, numpy strings are always present, and
    object columns are compared elementwise (in C) with None, themselves (NaN != NaN) and +-inf.
    """
    kind = col.dtype.kind
    if kind in "fc":
        return np.isfinite(col)
    if kind in "iubUS":
        return np.ones(col.shape, dtype=bool)
    mask = np.not_equal(col, None)
    mask &= np.equal(col, col)
    mask &= np.not_equal(col, np.inf)
    mask &= np.not_equal(col, -np.inf)
    return mask


def is_unusable(col: np.ndarray) -> bool:
    """True if ``col`` holds no usable value or a single distinct one (objects compared as str)."""
    have = present(col)
    if not have.all():
        if not have.any():
            return True
        col = col[have]
    if col.dtype.kind == "O":
        col = col.astype(str)
    return bool((col == col[0]).all())


PEEL_PASSES = 16  # distinct values found by masking before falling back to np.unique


def distinct_str(col: np.ndarray) -> np.ndarray:
    """Sorted distinct values of ``col`` as str (``np.unique(col.astype(str))``).

    Categorical columns hold few distinct values, so each is found by one vectorized comparison
    pass (masking its rows out) -- several times faster than sorting or hashing every row; values
    left after PEEL_PASSES passes go to np.unique.
    """
    values = col if col.dtype.kind == "U" else col.astype(str)
    remaining = np.ones(len(values), dtype=bool)
    found: list[str] = []
    for _ in range(PEEL_PASSES):
        first = int(remaining.argmax()) if len(values) else 0
        if not len(values) or not remaining[first]:
            return np.unique(np.asarray(found, dtype=str))
        found.append(values[first])
        remaining &= values != values[first]
    rest = np.unique(values[remaining]) if remaining.any() else np.asarray([], dtype=str)
    return np.unique(np.concatenate([np.asarray(found, dtype=str), rest]))


def _category_index(col: np.ndarray, categories: tuple[str, ...] | None) -> np.ndarray:
    assert categories is not None
    vocab = np.asarray(categories, dtype=str)
    order = np.argsort(vocab)
    values = col if col.dtype.kind == "U" else col.astype(str)
    pos = np.searchsorted(vocab[order], values)
    return order[np.clip(pos, 0, len(vocab) - 1)].astype(np.float32)
