"""What a column may be coded given: the columns of the same rows decoded before it.

Each column a block has coded is kept as *codes*: its distinct values numbered in order of
first appearance, values told apart by storage class and, for REALs, by their bits (``1`` and
``1.0``, ``0.0`` and ``-0.0`` are different values). Encoder and decoder number the same values
the same way, so the decoder rebuilds the codes from what it has decoded; nothing about them is
stored. A JSON field sees the same columns restricted to the rows of its template.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

#: columns with more distinct values than this are not offered as a context (their table of
#: conditional counts would cost more than it could save)
MAX_CONTEXT_VALUES = 1 << 12
_PACK = struct.Struct("<d").pack


def key(v: Any) -> Any:
    """``v`` as a dict key that tells storage classes and float bit patterns apart."""
    t = type(v)
    if t is float:
        return (2, _PACK(v))
    if t is bool:
        return (5, v)
    if t is int:
        return (1, v)
    return v  # None, str, bytes: equal only to their own kind


class Factors:
    """A column as codes: ``codes[i]`` numbers row i's value among ``firsts``, the distinct
    values in order of first appearance; ``index`` maps a value's ``key`` to its code."""

    def __init__(self, values: Sequence[Any]) -> None:
        self.values = list(values)
        self.index: dict[Any, int] = {}
        self.firsts: list[Any] = []
        self.codes = np.empty(len(values), dtype=np.int64)
        index, firsts, codes = self.index, self.firsts, self.codes
        for i, v in enumerate(values):
            k = key(v)
            c = index.get(k)
            if c is None:
                c = index[k] = len(firsts)
                firsts.append(v)
            codes[i] = c

    def same(self, other: Factors) -> np.ndarray:
        """Per row, whether this column's value is ``other``'s (same key)."""
        theirs = np.array([other.index.get(key(v), -1) for v in self.firsts], dtype=np.int64)
        return theirs[self.codes] == other.codes if len(self.codes) else np.zeros(0, bool)


class Context:
    """Earlier columns of the same rows, as ``Factors``, that a column may be coded given."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.columns: list[Factors] = []

    def add(self, values: Sequence[Any], factors: Factors | None = None) -> None:
        """A column just coded (or decoded) becomes available to the ones after it
        (``factors``: its ``Factors`` if already made)."""
        self.columns.append(factors if factors is not None else Factors(values))

    def subset(self, rows: np.ndarray) -> Context:
        """The same columns restricted to ``rows`` (renumbered as they first appear there)."""
        out = Context(len(rows))
        take = rows.tolist()
        for f in self.columns:
            out.add([f.values[i] for i in take])
        return out

    def candidates(self) -> list[int]:
        """Columns usable as a context (few enough distinct values, more than one)."""
        return [i for i, f in enumerate(self.columns) if 1 < len(f.firsts) <= MAX_CONTEXT_VALUES]
