"""A column coded on its own or given the columns of the same rows decoded before it.

- ``OWN``: by type (``typed``);
- ``CODED``: a table of the distinct values, then each row's value entropy-coded given one
  earlier column or a pair of them (``conditional``): a JSON template given ``action_type`` and
  ``module_type``, ``action_taken`` given ``action_type``;
- predicted, the rows where the prediction is wrong listed and coded (given the same columns
  at those rows):

  - ``SAME``: the value of an earlier column (``resources_after`` of a defend is its
    ``resources_before``; an INTEGER PRIMARY KEY is the rowid);
  - ``LAG``: an earlier column's value (or this one's) at the previous row of the same entity
    (``lags``: an incident's ``health_before`` is the agent's last ``health_after``; a DQN
    row's reward is its action row's);
  - ``SUM`` / ``DIFF``: two earlier numeric columns added or subtracted, in the arithmetic
    the values had (``agent_resources_after`` = ``agent_resources_before`` +
    ``amount_gathered``, float bits and all).

The smallest by ``Sink.estimate`` is kept. Columns with a declared tolerance are coded on their
own (on the grid).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from meaning_transform.codec.block_io import Sink, Source
from meaning_transform.codec.conditional import cost_bits, put_conditional, take_conditional
from meaning_transform.codec.context import ColumnCoder, Context, Factors
from meaning_transform.codec.lags import key_columns, lag_prediction, previous_rows
from meaning_transform.codec.numbers import put_ints, take_ints
from meaning_transform.codec.series import series_options, take_series
from meaning_transform.codec.typed import put_values, take_values

OWN, CODED, SAME, LAG, SUM, DIFF, SERIES = range(7)
#: a prediction is tried when it is right in at least this share of rows
_MIN_RIGHT = 0.25
_MAX_OPERANDS = 8  # the latest numeric columns tried as SUM / DIFF operands
_EXACT_INT = 2.0**53
_NUMBER = (int, float)


def put_column(
    sink: Sink,
    values: Sequence[Any],
    tolerance: float | None = None,
    context: Context | None = None,
    json_ok: bool = True,
    predict: bool = True,
    factors: Factors | None = None,
) -> Factors:
    """``values`` (their count is the reader's to know) given ``context``; returns their
    ``Factors`` (``factors``, if the caller has them already) for the caller to add to the
    context (``predict``: may be a prediction's exceptions; not for exceptions themselves)."""
    context = context if context is not None else Context(len(values))
    own = Sink()
    own.plan.uint(OWN)
    put_values(own, values, tolerance, context, _COLUMNS, json_ok)
    options = [own]
    mine = factors if factors is not None else Factors(values)
    if tolerance is None and len(values) > 1 and context.columns:
        options += _coded(mine, context)
        if predict:
            theirs = [mine.codes_of(f) for f in context.columns]  # in this column's numbering
            found = _predictions(mine, context, theirs)
            if found:  # the one right most often (its wrong rows are what costs)
                head, right = max(found, key=lambda f: f[1].sum())
                options.append(_predicted(values, head, right, context))
            if len(mine.firsts) > 2:
                options += series_options(SERIES, values, context, _PARTS)
    sink.extend(min(options, key=Sink.estimate))
    return mine


def take_column(
    src: Source,
    n: int,
    context: Context | None = None,
    json_ok: bool = True,
    leaf: bool = False,
    predict: bool = True,
) -> list[Any]:
    """``n`` values written by ``put_column`` with the same ``context``."""
    context = context if context is not None else Context(n)
    mode = src.plan.uint(SERIES if predict else CODED, "a column coding")
    if mode == OWN:
        return take_values(src, n, context, _COLUMNS, json_ok, json_leaf=leaf)
    if mode == CODED:
        ctx = _context_codes(src, context)
        k = src.plan.uint(n, "the number of distinct values")
        firsts = take_values(src, k, json_leaf=leaf)
        codes = take_conditional(src, ctx, k)
        return [firsts[c] for c in codes.tolist()]
    if mode == SERIES:
        return take_series(src, n, context, _PARTS)
    return _take_predicted(src, mode, n, context, leaf)


# ---------------------------------------------------------------- predictions
def _predictions(
    mine: Factors, context: Context, theirs: list[np.ndarray]
) -> list[tuple[list[int], np.ndarray]]:
    """(plan numbers, rows predicted right) of the best SAME, LAG and SUM / DIFF."""
    n = len(mine.codes)
    found = []
    same = max(((t == mine.codes, j) for j, t in enumerate(theirs)), key=lambda x: x[0].sum())
    found.append(([SAME, same[1]], same[0]))
    keys = key_columns(context.columns)
    best_lag = None
    for k in keys:
        prev = previous_rows(context.columns[k].codes)
        for j, t in enumerate([mine.codes, *theirs]):
            right = lag_prediction(t, prev) == mine.codes
            if best_lag is None or right.sum() > best_lag[1].sum():
                best_lag = ([LAG, k, j], right)
    if best_lag is not None:
        found.append(best_lag)
    arith = _arithmetic(mine, context)
    if arith is not None:
        found.append(arith)
    return [(head, right) for head, right in found if right.sum() >= _MIN_RIGHT * n]


def _numeric(f: Factors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the value as float64, whether it is an int, whether it is a number at all
    (bools are not)."""
    kinds = [type(v) for v in f.firsts]
    num = np.array([k in _NUMBER for k in kinds], dtype=bool)
    ints = np.array([k is int for k in kinds], dtype=bool)
    x = np.array([float(v) if k in _NUMBER else 0.0 for v, k in zip(f.firsts, kinds, strict=True)])
    return x[f.codes], ints[f.codes], num[f.codes]


def _arithmetic(mine: Factors, context: Context) -> tuple[list[int], np.ndarray] | None:
    """The SUM or DIFF of two earlier numeric columns right in the most rows."""
    if not mine.types & set(_NUMBER) or len(mine.firsts) < 3:
        return None  # a column of few values is CODED given its context
    x, x_int, x_num = _numeric(mine)
    x_bits = x.view(np.uint64)
    operands = [(j, *_numeric(f)) for j, f in enumerate(context.columns) if f.types & set(_NUMBER)][
        -_MAX_OPERANDS:
    ]
    best = None
    for ia, (a, av, a_int, a_num) in enumerate(operands):
        for b, bv, b_int, b_num in operands[ia:] + operands[:ia]:
            for op, fn in ((SUM, np.add), (DIFF, np.subtract)):
                if op == SUM and b < a:
                    continue
                with np.errstate(all="ignore"):
                    pred = fn(av, bv)
                both_int = a_int & b_int
                small = (
                    (np.abs(av) < _EXACT_INT) & (np.abs(bv) < _EXACT_INT) & (np.abs(x) < _EXACT_INT)
                )
                right = (
                    a_num
                    & b_num
                    & x_num
                    & np.where(
                        both_int,
                        x_int & small & (pred == x),
                        ~x_int & (pred.view(np.uint64) == x_bits),
                    )
                )
                if best is None or right.sum() > best[1].sum():
                    best = ([op, a, b], right)
    return best


def _predicted(values: Sequence[Any], head: list[int], right: np.ndarray, context: Context) -> Sink:
    """An option: the prediction's numbers, then the rows it gets wrong and their values
    (coded given the earlier columns at those rows)."""
    option = Sink()
    for v in head:
        option.plan.uint(v)
    rows = np.flatnonzero(~right)
    option.plan.uint(len(rows))
    if len(rows):
        put_ints(option, rows)
        put_column(
            option, [values[i] for i in rows.tolist()], None, context.subset(rows), False, False
        )
    return option


def _take_predicted(src: Source, mode: int, n: int, context: Context, leaf: bool) -> list[Any]:
    if not context.columns:
        raise src.fail("a column refers to one that does not exist")
    last = len(context.columns) - 1
    if mode == SAME:
        predict = _copy(context.columns[src.plan.uint(last, "a column")].values)
    elif mode == LAG:
        k = src.plan.uint(last, "an entity column")
        j = src.plan.uint(last + 1, "a source column")
        prev = previous_rows(context.columns[k].codes).tolist()
        predict = _lagged(prev, context.columns[j - 1].values if j else None)
    else:
        a = context.columns[src.plan.uint(last, "an operand")].values
        b = context.columns[src.plan.uint(last, "an operand")].values
        predict = _arith(a, b, mode == SUM)
    m = src.plan.uint(n, "the number of exceptions")
    rows = take_ints(src, m) if m else np.zeros(0, dtype=np.int64)
    if m and (rows.min() < 0 or rows.max() >= n or (np.diff(rows) <= 0).any()):
        raise src.fail("an exception's row is out of range")
    out: list[Any] = [None] * n
    if m:
        sub = context.subset(rows)
        for i, v in zip(rows.tolist(), take_column(src, m, sub, False, leaf, False), strict=True):
            out[i] = v
    given = np.zeros(n, dtype=bool)
    given[rows] = True
    if not predict(out, np.flatnonzero(~given).tolist()):
        raise src.fail("a predicted value has nothing to be predicted from")
    return out


Predict = Callable[[list[Any], list[int]], bool]


def _copy(source: list[Any]) -> Predict:
    def fill(out: list[Any], rows: list[int]) -> bool:
        for i in rows:
            out[i] = source[i]
        return True

    return fill


def _lagged(prev: list[int], source: list[Any] | None) -> Predict:
    def fill(out: list[Any], rows: list[int]) -> bool:
        src = out if source is None else source  # this column's own earlier rows: in order
        for i in rows:
            if prev[i] < 0:
                return False
            out[i] = src[prev[i]]
        return True

    return fill


def _arith(a: list[Any], b: list[Any], add: bool) -> Predict:
    def fill(out: list[Any], rows: list[int]) -> bool:
        for i in rows:
            x, y = a[i], b[i]
            if type(x) not in _NUMBER or type(y) not in _NUMBER:
                return False
            out[i] = x + y if add else x - y
        return True

    return fill


# ---------------------------------------------------------------- entropy-coded given context
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


def _put_part(sink: Sink, values: list, context: Context) -> Factors:
    return put_column(sink, values, None, context, json_ok=False)


def _take_part(src: Source, n: int, context: Context) -> list:
    return take_column(src, n, context, json_ok=False, leaf=True)


#: JSON fields: columns like any other, given the same context
_COLUMNS = ColumnCoder(_put_part, _take_part)


def _put_unpredicted(sink: Sink, values: list, context: Context) -> Factors:
    return put_column(sink, values, None, context, json_ok=False, predict=False)


def _take_unpredicted(src: Source, n: int, context: Context) -> list:
    return take_column(src, n, context, json_ok=False, leaf=True, predict=False)


#: a series' differences: coded on their own or given the context, not predicted again
_PARTS = ColumnCoder(_put_unpredicted, _take_unpredicted)
