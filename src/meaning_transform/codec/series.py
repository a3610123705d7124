"""A numeric column as each entity's changes: the value minus the same entity's previous one.

An agent's health after an incident is its health after the last one plus this one's change
(+1 healing, 0 when capped, minus the damage); a step's average age is the last step's plus
about one. Coded as differences, such a column is mostly a few repeated changes, which the
column coder then codes given the other columns (the change given ``cause``). Floats are taken
at one decimal scale ``s``: ``q = round(x * 10**s)``, differences of ``q`` per entity, and the
bit difference of ``x`` from ``q / 10**s`` (0 for a short decimal) as a second column, so the
values come back to the bit. The entity is the key column whose differences are smallest, or
simply the row before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from meaning_transform.codec.block_io import Sink, Source
from meaning_transform.codec.context import ColumnCoder, Context
from meaning_transform.codec.lags import key_columns, previous_rows
from meaning_transform.codec.numbers import (
    MAX_SCALE,
    _bitlen,
    _bits,
    _decimal,
    _scales,
    put_ints,
    put_reals,
    take_ints,
    take_reals,
    zigzag,
)

_INT, _FLOAT, _STEPS = 0, 1, 2
_ROW_BEFORE = 0  # key 0: the row before; key j + 1: context column j


def _prev(context: Context, key: int, n: int) -> np.ndarray:
    if key == _ROW_BEFORE:
        return np.arange(n, dtype=np.int64) - 1
    return previous_rows(context.columns[key - 1].codes)


def _deltas(q: np.ndarray, prev: np.ndarray) -> np.ndarray:
    base = np.where(prev >= 0, q[np.maximum(prev, 0)], 0)
    return q - base  # wraps modulo 2**64, as the decoder's sums undo it


def series_options(
    mode: int, values: Sequence[Any], context: Context, coder: ColumnCoder
) -> list[Sink]:
    """``values`` as per-entity differences, each option's plan starting with ``mode``: of
    integers, of decimal integers (floats at one scale, with their bit differences), and of
    floats as float differences (``x = x_prev + d``, the float sum checked row by row). None
    for values that are not all integers or all floats."""
    kinds = set(map(type, values))
    if kinds not in ({int}, {float}):
        return []
    n = len(values)
    keys = [_ROW_BEFORE] + [k + 1 for k in key_columns(context.columns)]
    prevs = {k: _prev(context, k, n) for k in keys}
    if kinds == {int}:
        x = np.array(values, dtype=np.int64)
        return [_decimal_option(mode, _INT, x, 0, None, prevs, context, coder)]
    x = np.array(values, dtype=np.float64)
    best = None
    for scale in np.unique(_scales(x[:: max(1, n // 4096)])).tolist():
        q, off = _decimal(x, np.full(n, scale))  # the scale and entity needing fewest bits
        extra = int(_bitlen(zigzag(off)).sum())
        for k in keys:
            cost = int(_bitlen(zigzag(_deltas(q, prevs[k]))).sum()) + extra
            if best is None or cost < best[0]:
                best = (cost, scale, k, q, off)
    _, scale, key, q, off = best
    return [
        _decimal_option(mode, _FLOAT, q, scale, off, {key: prevs[key]}, context, coder),
        _steps_option(mode, x, prevs, context, coder),
    ]


def _decimal_option(
    mode: int,
    kind: int,
    q: np.ndarray,
    scale: int,
    off: np.ndarray | None,
    prevs: dict[int, np.ndarray],
    context: Context,
    coder: ColumnCoder,
) -> Sink:
    key = min(prevs, key=lambda k: int(_bitlen(zigzag(_deltas(q, prevs[k]))).sum()))
    option = Sink()
    for v in (mode, key, kind):
        option.plan.uint(v)
    if kind == _FLOAT:
        option.plan.uint(scale)
    dq = _deltas(q, prevs[key]).tolist()
    parts = Context(len(q))
    parts.columns = list(context.columns)
    parts.add(dq, coder.put(option, dq, parts))
    if off is not None:
        coder.put(option, off.tolist(), parts)
    return option


def _steps_option(
    mode: int, x: np.ndarray, prevs: dict[int, np.ndarray], context: Context, coder: ColumnCoder
) -> Sink:
    """Float differences from the entity whose differences take the fewest distinct values;
    the rows where ``x_prev + d`` is not ``x`` to the bit kept exactly."""
    best = None
    for k, prev in prevs.items():
        base = np.where(prev >= 0, x[np.maximum(prev, 0)], 0.0)
        with np.errstate(all="ignore"):
            d = x - base
            wrong = _bits(base + d) != _bits(x)
        score = len(np.unique(_bits(d))) + 64 * int(wrong.sum())
        if best is None or score < best[0]:
            best = (score, k, d, wrong)
    _, key, d, wrong = best
    option = Sink()
    for v in (mode, key, _STEPS):
        option.plan.uint(v)
    rows = np.flatnonzero(wrong)
    option.plan.uint(len(rows))
    if len(rows):
        put_ints(option, rows)
        put_reals(option, x[rows], table=False)
    d[rows] = 0.0
    coder.put(option, d.tolist(), context)
    return option


def take_series(src: Source, n: int, context: Context, coder: ColumnCoder) -> list[Any]:
    """``n`` values written by one of ``series_options`` with the same ``context``."""
    key = src.plan.uint(len(context.columns), "an entity column")
    kind = src.plan.uint(_STEPS, "a number kind")
    if kind == _STEPS:
        return _take_steps(src, n, context, coder, key)
    scale = src.plan.uint(MAX_SCALE, "a decimal scale") if kind == _FLOAT else 0
    parts = Context(n)
    parts.columns = list(context.columns)
    dq = _ints(src, coder.take(src, n, parts))
    parts.add(dq.tolist())
    q = _sums(dq, None if key == _ROW_BEFORE else context.columns[key - 1].codes)
    if kind == _INT:
        return q.tolist()
    off = _ints(src, coder.take(src, n, parts))
    bits = _bits(q / np.float64(10.0**scale)) + off.view(np.uint64)
    return bits.astype("<u8").view("<f8").astype(np.float64).tolist()


def _take_steps(src: Source, n: int, context: Context, coder: ColumnCoder, key: int) -> list:
    m = src.plan.uint(n, "the number of exact values")
    rows = take_ints(src, m) if m else np.zeros(0, dtype=np.int64)
    if m and (rows.min() < 0 or rows.max() >= n):
        raise src.fail("an exact value's row is out of range")
    exact = {}
    if m:
        exact = dict(zip(rows.tolist(), take_reals(src, m, False, False).tolist(), strict=True))
    d = coder.take(src, n, context)
    if not all(type(v) is float for v in d):
        raise src.fail("a series' difference is not a float")
    prev = _prev(context, key, n).tolist()
    out: list[float] = [0.0] * n
    for i in range(n):  # in row order: a row's previous one is already restored
        out[i] = exact[i] if i in exact else (out[prev[i]] if prev[i] >= 0 else 0.0) + d[i]
    return out


def _ints(src: Source, values: list[Any]) -> np.ndarray:
    if not all(type(v) is int for v in values):
        raise src.fail("a series' difference is not an integer")
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        raise src.fail("a series' difference is out of range") from None


def _sums(dq: np.ndarray, entities: np.ndarray | None) -> np.ndarray:
    """Undo ``_deltas``: each entity's values are the running sums of its differences, in row
    order (``entities`` None: one entity, every row)."""
    if entities is None or not len(dq):
        return np.cumsum(dq, dtype=np.int64)
    order = np.argsort(entities, kind="stable")
    sums = np.cumsum(dq[order], dtype=np.int64)
    first = np.ones(len(order), dtype=bool)
    first[1:] = entities[order][1:] != entities[order][:-1]
    starts = np.flatnonzero(first)
    before = np.where(starts > 0, sums[np.maximum(starts - 1, 0)], 0)  # sums of earlier groups
    q = np.empty_like(dq)
    q[order] = sums - np.repeat(before, np.diff(np.append(starts, len(order))))
    return q
