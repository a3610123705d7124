"""A column coded on its own or given the columns of the same rows decoded before it.

- ``OWN``: by type (``typed``);
- ``SAME``: the value of an earlier column, except at listed rows (``resources_after`` of a
  defend is its ``resources_before``; an INTEGER PRIMARY KEY is the rowid);
- ``CODED``: a table of the distinct values, then each row's value entropy-coded given one
  earlier column or a pair of them (``conditional``): a JSON template given ``action_type`` and
  ``module_type``, ``action_taken`` given ``action_type``.

The smallest by ``Sink.estimate`` is kept. Columns with a declared tolerance are coded on their
own (on the grid).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from meaning_transform.codec.block_io import Sink, Source
from meaning_transform.codec.conditional import cost_bits, put_conditional, take_conditional
from meaning_transform.codec.context import Context, Factors
from meaning_transform.codec.lags import key_columns, lag_prediction, previous_rows
from meaning_transform.codec.numbers import put_ints, take_ints
from meaning_transform.codec.typed import Fields, put_values, take_values

OWN, SAME, CODED, LAG = range(4)


def put_column(
    sink: Sink,
    values: Sequence[Any],
    tolerance: float | None = None,
    context: Context | None = None,
    json_ok: bool = True,
) -> Factors:
    """``values`` (their count is the reader's to know) given ``context``; returns their
    ``Factors`` for the caller to add to the context."""
    context = context if context is not None else Context(len(values))
    own = Sink()
    own.plan.uint(OWN)
    put_values(own, values, tolerance, context, _FIELDS if json_ok else None)
    options = [own]
    mine = Factors(values)
    if tolerance is None and len(values) > 1 and context.columns:
        theirs = [mine.codes_of(f) for f in context.columns]  # in this column's numbering
        options += _same(values, mine, theirs) + _coded(mine, context)
        options += _lag(values, mine, context, theirs)
    sink.extend(min(options, key=Sink.estimate))
    return mine


def take_column(
    src: Source, n: int, context: Context | None = None, json_ok: bool = True, leaf: bool = False
) -> list[Any]:
    """``n`` values written by ``put_column`` with the same ``context``."""
    context = context if context is not None else Context(n)
    mode = src.plan.uint(LAG, "a column coding")
    if mode == OWN:
        return take_values(src, n, context, _FIELDS if json_ok else None, json_leaf=leaf)
    if mode == SAME:
        j = src.plan.uint(len(context.columns) - 1 if context.columns else 0, "a column")
        if not context.columns:
            raise src.fail("a column refers to one that does not exist")
        out = list(context.columns[j].values)
        rows, values = _take_exceptions(src, n, leaf)
        for i, v in zip(rows.tolist(), values, strict=True):
            out[i] = v
        return out
    if mode == LAG:
        return _take_lag(src, n, context, leaf)
    ctx = _context_codes(src, context)
    k = src.plan.uint(n, "the number of distinct values")
    firsts = take_values(src, k, json_leaf=leaf)
    codes = take_conditional(src, ctx, k)
    return [firsts[c] for c in codes.tolist()]


def _same(values: Sequence[Any], mine: Factors, theirs: list[np.ndarray]) -> list[Sink]:
    """The ``SAME`` option for the earlier column equal to this one in the most rows."""
    best, best_j = None, -1
    for j, codes in enumerate(theirs):
        eq = codes == mine.codes
        if best is None or eq.sum() > best.sum():
            best, best_j = eq, j
    if best is None or 2 * best.sum() < len(values):
        return []
    option = Sink()
    option.plan.uint(SAME)
    option.plan.uint(best_j)
    _exceptions(option, values, ~best)
    return [option]


def _exceptions(option: Sink, values: Sequence[Any], wrong: np.ndarray) -> None:
    """The rows a prediction gets wrong, and their values."""
    rows = np.flatnonzero(wrong)
    option.plan.uint(len(rows))
    if len(rows):
        put_ints(option, rows)
    put_values(option, [values[i] for i in rows.tolist()])


def _take_exceptions(src: Source, n: int, leaf: bool) -> tuple[np.ndarray, list[Any]]:
    m = src.plan.uint(n, "the number of exceptions")
    rows = take_ints(src, m) if m else np.zeros(0, dtype=np.int64)
    if m and (rows.min() < 0 or rows.max() >= n or (np.diff(rows) <= 0).any()):
        raise src.fail("an exception's row is out of range")
    return rows, take_values(src, m, json_leaf=leaf)


def _lag(
    values: Sequence[Any], mine: Factors, context: Context, theirs: list[np.ndarray]
) -> list[Sink]:
    """The ``LAG`` option: the value an earlier column (or this one) had at the previous row of
    the same entity, for the entity column and source that are right most often."""
    best, best_at = None, (0, 0)
    keys = key_columns(context.columns)
    if not keys:
        return []
    sources = [mine.codes, *theirs]
    for k in keys:
        prev = previous_rows(context.columns[k].codes)
        for j, theirs in enumerate(sources):
            right = lag_prediction(theirs, prev) == mine.codes
            if best is None or right.sum() > best.sum():
                best, best_at = right, (k, j)
    if best is None or 2 * best.sum() < len(values):
        return []
    option = Sink()
    option.plan.uint(LAG)
    option.plan.uint(best_at[0])
    option.plan.uint(best_at[1])
    _exceptions(option, values, ~best)
    return [option]


def _take_lag(src: Source, n: int, context: Context, leaf: bool) -> list[Any]:
    last = max(len(context.columns) - 1, 0)
    k = src.plan.uint(last, "an entity column")
    j = src.plan.uint(last + 1, "a source column")
    if not context.columns:
        raise src.fail("a column refers to one that does not exist")
    prev = previous_rows(context.columns[k].codes).tolist()
    rows, values = _take_exceptions(src, n, leaf)
    out: list[Any] = [None] * n
    given = np.zeros(n, dtype=bool)
    given[rows] = True
    for i, v in zip(rows.tolist(), values, strict=True):
        out[i] = v
    source = context.columns[j - 1].values if j else out
    for i in np.flatnonzero(~given).tolist():
        if prev[i] < 0:
            raise src.fail("a row has no earlier row to repeat")
        out[i] = source[prev[i]]
    return out


def _coded(mine: Factors, context: Context) -> list[Sink]:
    """The ``CODED`` option given the earlier column (or pair) that predicts this one best."""
    k, n = len(mine.firsts), len(mine.codes)
    if k < 2 or 2 * k > n:
        return []
    candidates = [(j,) for j in context.candidates()]
    if not candidates:
        return []
    scored = sorted((cost_bits(mine.codes, _codes(context, c), k), c) for c in candidates)
    if len(scored) > 1:
        top = [c[0] for _, c in scored[:3]]
        pairs = [(a, b) for a in top for b in top if a < b]
        scored += [(cost_bits(mine.codes, _codes(context, c), k), c) for c in pairs]
    chosen = min(scored)[1]
    option = Sink()
    option.plan.uint(CODED)
    option.plan.uint(len(chosen))
    for j in chosen:
        option.plan.uint(j)
    option.plan.uint(k)
    put_values(option, mine.firsts)
    put_conditional(option, mine.codes, _codes(context, chosen), k)
    return [option]


def _codes(context: Context, columns: tuple[int, ...]) -> np.ndarray:
    """The codes of one context column, or of a pair of them as one (numbered densely)."""
    if len(columns) == 1:
        return context.columns[columns[0]].codes
    a, b = (context.columns[j] for j in columns)
    joint = a.codes * len(b.firsts) + b.codes
    return np.unique(joint, return_inverse=True)[1].reshape(-1)


def _context_codes(src: Source, context: Context) -> np.ndarray:
    width = src.plan.uint(2, "the number of context columns")
    columns = tuple(
        src.plan.uint(max(len(context.columns) - 1, 0), "a context column") for _ in range(width)
    )
    if not width or not context.columns or (width == 2 and columns[0] >= columns[1]):
        raise src.fail("a column's context is invalid")
    return _codes(context, columns)


def _put_field(sink: Sink, values: list, context: Context) -> Factors:
    return put_column(sink, values, None, context, json_ok=False)


def _take_field(src: Source, n: int, context: Context) -> list:
    return take_column(src, n, context, json_ok=False, leaf=True)


_FIELDS = Fields(_put_field, _take_field)
