"""The previous row of the same entity: where a simulation log repeats itself.

An incident's ``health_before`` is, in 98% of rows, the ``health_after`` of the same agent's
previous incident. ``previous_rows`` finds, for each row, the last earlier row with the same
key (an ``agent_id``), and ``lag_matches`` counts how often a column's value is another
column's value there. ``coding_order`` uses it to code such a source column first, so the other
one is nearly free (``conditioned``'s ``LAG``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meaning_transform.codec.context import MAX_CONTEXT_VALUES, Factors

#: a column moves before another when the other repeats it in this share of rows
_MOVE_SHARE = 0.8
_MAX_COLUMNS = 64  # wider tables keep their order (the search is quadratic)
_FEW = 16  # columns of at most this many values go first


def previous_rows(keys: np.ndarray) -> np.ndarray:
    """Per row, the last earlier row with the same key, or -1."""
    n = len(keys)
    prev = np.full(n, -1, dtype=np.int64)
    if n > 1:
        order = np.argsort(keys, kind="stable")
        same = keys[order][1:] == keys[order][:-1]
        prev[order[1:][same]] = order[:-1][same]
    return prev


def lag_prediction(theirs: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """Per row, ``theirs`` (a source column's codes in the target's numbering,
    ``Factors.codes_of``) at the previous row of the same entity, or -1 where there is none."""
    return np.where(prev >= 0, theirs[np.maximum(prev, 0)], -1)


def key_columns(columns: Sequence[Factors]) -> list[int]:
    """Columns that can name an entity: repeated, but with more than one value."""
    n = len(columns[0].codes) if columns else 0
    return [
        i for i, f in enumerate(columns) if 1 < len(f.firsts) <= min(MAX_CONTEXT_VALUES, n // 2)
    ]


def coding_order(columns: Sequence[Factors]) -> list[int]:
    """The columns' order for coding: as in the table, except that a column another one
    repeats (at the previous row of the same entity) in most rows comes right before it."""
    few = [i for i, f in enumerate(columns) if len(f.firsts) <= _FEW]  # contexts, cheap
    order = few + [i for i in range(len(columns)) if i not in few]
    if len(columns) > _MAX_COLUMNS:
        return order
    keys = key_columns(columns)
    prevs = {k: previous_rows(columns[k].codes) for k in keys}
    n = len(columns[0].codes) if columns else 0
    for a in range(len(columns)):
        for b in range(a + 1, len(columns)):
            if order.index(b) < order.index(a):
                continue
            theirs = columns[a].codes_of(columns[b])
            share = max(
                (
                    np.count_nonzero(lag_prediction(theirs, p) == columns[a].codes)
                    for k, p in prevs.items()
                    if k not in (a, b)
                ),
                default=0,
            )
            if share > _MOVE_SHARE * n:
                order.remove(b)
                order.insert(order.index(a), b)
    return order
