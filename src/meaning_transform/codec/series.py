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
from meaning_transform.codec.numbers import MAX_SCALE, _bitlen, _bits, _decimal, _scales, zigzag

_INT, _FLOAT = 0, 1
_ROW_BEFORE = 0  # key 0: the row before; key j + 1: context column j


def _prev(context: Context, key: int, n: int) -> np.ndarray:
    if key == _ROW_BEFORE:
        return np.arange(n, dtype=np.int64) - 1
    return previous_rows(context.columns[key - 1].codes)


def _deltas(q: np.ndarray, prev: np.ndarray) -> np.ndarray:
    base = np.where(prev >= 0, q[np.maximum(prev, 0)], 0)
    return q - base  # wraps modulo 2**64, as the decoder's sums undo it


def put_series(
    sink: Sink, values: Sequence[Any], context: Context, coder: ColumnCoder
) -> bool:
    """Write ``values`` as per-entity differences (after the caller's mode number); False,
    writing nothing, if they are not all integers or all floats."""
    kinds = set(map(type, values))
    if kinds == {int}:
        kind, q = _INT, np.array(values, dtype=np.int64)
        off = None
    elif kinds == {float}:
        x = np.array(values, dtype=np.float64)
        scale = int(np.bincount(_scales(x[:: max(1, len(x) // 4096)])).argmax())
        q, off = _decimal(x, np.full(len(x), scale))
        kind = _FLOAT
    else:
        return False
    n = len(values)
    keys = [_ROW_BEFORE] + [k + 1 for k in key_columns(context.columns)]
    cost = [int(_bitlen(zigzag(_deltas(q, _prev(context, k, n)))).sum()) for k in keys]
    key = keys[int(np.argmin(cost))]
    sink.plan.uint(key)
    sink.plan.uint(kind)
    if kind == _FLOAT:
        sink.plan.uint(scale)
    dq = _deltas(q, _prev(context, key, n)).tolist()
    parts = Context(n)
    parts.columns = list(context.columns)
    parts.add(dq, coder.put(sink, dq, parts))
    if off is not None:
        coder.put(sink, off.tolist(), parts)
    return True


def take_series(src: Source, n: int, context: Context, coder: ColumnCoder) -> list[Any]:
    """``n`` values written by ``put_series`` with the same ``context``."""
    key = src.plan.uint(len(context.columns), "an entity column")
    kind = src.plan.uint(_FLOAT, "a number kind")
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
