"""A column of SQLite values (or JSON scalars), exact, storage class included.

Each value's class -- NULL, INTEGER, REAL, TEXT, BLOB (and JSON's false/true) -- is a tag
(stored only when a column mixes classes), then each class's values are coded apart: integers
and reals by ``numbers``, TEXT as a JSON column (``json_columns``) when its content is JSON and
that is smaller, else as strings (``strings``), BLOBs as strings. TEXT is carried as its bytes
(``surrogateescape``), so text that is not valid UTF-8 comes back byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from meaning_transform.codec.block_io import MAX_TEXT, Sink, Source
from meaning_transform.codec.context import ColumnCoder, Context
from meaning_transform.codec.json_columns import looks_like_json, put_json, take_json
from meaning_transform.codec.numbers import put_ints, put_reals, take_ints, take_reals
from meaning_transform.codec.strings import put_byte_strings, take_byte_strings

NULL, INT, REAL, TEXT, BLOB, FALSE, TRUE = range(7)
_CLASS = {type(None): NULL, int: INT, float: REAL, str: TEXT, bytes: BLOB}
_ALL = (1 << 7) - 1
T_STRINGS, T_JSON = 0, 1


def _class(v: Any) -> int:
    t = type(v)
    if t is bool:
        return TRUE if v else FALSE
    return _CLASS[t]


def put_values(
    sink: Sink,
    values: Sequence[Any],
    tolerance: float | None = None,
    context: Context | None = None,
    coder: ColumnCoder | None = None,
    json_ok: bool = False,
) -> None:
    """``values`` (their count is the reader's to know); REALs within ``tolerance`` if given.
    With ``json_ok``, a ``coder`` and ``context`` (the earlier columns of the same rows), TEXT
    is taken apart as JSON where that is smaller, its fields coded by ``coder`` given them."""
    kinds = set(map(type, values))
    if len(kinds) == 1 and bool not in kinds:  # one storage class: no tag per value
        c = _CLASS[kinds.pop()]
        tags = np.full(len(values), c, dtype=np.uint8)
        present = 1 << c
    else:
        tags = np.fromiter(map(_class, values), dtype=np.uint8, count=len(values))
        present = 0
        for c in np.unique(tags).tolist():
            present |= 1 << c
    sink.plan.uint(present)
    if present & (present - 1):  # more than one class
        sink.uints(tags)
    for c in range(7):
        if not present >> c & 1 or c in (NULL, FALSE, TRUE):
            continue
        rows = np.arange(len(values)) if present == 1 << c else np.flatnonzero(tags == c)
        sub = values if present == 1 << c else [values[i] for i in rows.tolist()]
        if c == INT:
            put_ints(sink, np.array(sub, dtype=np.int64))
        elif c == REAL:
            put_reals(sink, np.array(sub, dtype=np.float64), tolerance)
        elif c == TEXT:
            _put_texts(sink, sub, _subset(context, rows, len(values)), coder if json_ok else None)
        else:
            put_byte_strings(sink, sub)


def take_values(
    src: Source,
    n: int,
    context: Context | None = None,
    coder: ColumnCoder | None = None,
    json_ok: bool = False,
    json_leaf: bool = False,
) -> list[Any]:
    """``n`` values written by ``put_values`` with the same ``context``, ``coder`` and
    ``json_ok`` (``json_leaf``: JSON scalars, so no BLOBs and no tolerance grid)."""
    src.count(n)
    present = src.plan.uint(_ALL, "a set of storage classes")
    if n and not present or present >> BLOB & 1 and json_leaf:
        raise src.fail("a column's storage classes are invalid")
    if not present & (present - 1):
        tags = None
    else:
        tags = src.uints(n)
        if n and (tags.max() > TRUE or not all(present >> c & 1 for c in np.unique(tags))):
            raise src.fail("a value's storage class is not among the column's")
    out = np.full(n, None, dtype=object)
    for c in range(7):
        if not present >> c & 1:
            continue
        rows = np.arange(n) if tags is None else np.flatnonzero(tags == c)
        m = len(rows)
        if c == INT:
            values: Any = take_ints(src, m).tolist()
        elif c == REAL:
            values = take_reals(src, m, grid=not json_leaf).tolist()
        elif c == TEXT:
            values = _take_texts(src, m, _subset(context, rows, n), coder if json_ok else None)
        elif c == BLOB:
            values = take_byte_strings(src, m)
        else:
            values = [None, False, True][(NULL, FALSE, TRUE).index(c)]
        out[rows] = values if not isinstance(values, list) else _objects(values)
    return out.tolist()


def _objects(values: list[Any]) -> np.ndarray:
    a = np.empty(len(values), dtype=object)
    a[:] = values
    return a


def _subset(context: Context | None, rows: np.ndarray, n: int) -> Context | None:
    """``context`` at the rows of one storage class (itself when that is every row)."""
    if context is None or len(rows) == n:
        return context
    return context.subset(rows)


def _put_texts(
    sink: Sink, texts: Sequence[str], context: Context | None, coder: ColumnCoder | None
) -> None:
    plain = Sink()
    plain.plan.uint(T_STRINGS)
    put_byte_strings(plain, [t.encode("utf-8", "surrogateescape") for t in texts])
    if coder is None or sum(map(len, texts)) > MAX_TEXT // 2 or not looks_like_json(texts):
        sink.extend(plain)  # (the decoder builds at most MAX_TEXT of joined text per block)
        return
    parsed = Sink()
    parsed.plan.uint(T_JSON)
    inner = context if context is not None else Context(len(texts))
    put_json(parsed, texts, inner, coder.put, lambda s, v: _put_texts(s, v, None, None))
    sink.extend(parsed if parsed.estimate() < plain.estimate() else plain)


def _take_texts(
    src: Source, n: int, context: Context | None, coder: ColumnCoder | None
) -> list[str]:
    mode = src.plan.uint(T_STRINGS if coder is None else T_JSON, "a text coding")
    if mode == T_JSON:
        assert coder is not None
        inner = context if context is not None else Context(n)
        return take_json(src, n, inner, coder.take, lambda s, m: _take_texts(s, m, None, None))
    return take_byte_strings(src, n, text=True)
