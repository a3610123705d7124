"""What a column may be coded given: the columns of the same rows decoded before it.

Each column a block has coded is kept as *codes*: its distinct values numbered in order of
first appearance, values told apart by storage class and, for REALs, by their bits (``1`` and
``1.0``, ``0.0`` and ``-0.0`` are different values). Encoder and decoder number the same values
the same way, so the decoder rebuilds the codes from what it has decoded; nothing about them is
stored. A JSON field sees the same columns restricted to the rows of its template.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

#: columns with more distinct values than this are not offered as a context (their table of
#: conditional counts would cost more than it could save)
MAX_CONTEXT_VALUES = 1 << 12
_PACK = struct.Struct("<d").pack
#: types that are their own key (no two of them are equal across types)
_PLAIN = {int, str, bytes, type(None)}


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
    values in order of first appearance (``keys``: their ``key``; ``index``: key -> code)."""

    def __init__(self, values: Sequence[Any]) -> None:
        values = list(values)
        index: dict[Any, int] = {}
        self.types = set(map(type, values))
        if self.types <= _PLAIN:  # their own keys: no call per value
            codes = [index.setdefault(v, len(index)) for v in values]
        else:
            codes = [index.setdefault(key(v), len(index)) for v in values]
        self.__dict__["index"] = index
        self.__dict__["values"] = values
        self.codes = np.array(codes, dtype=np.int64)
        self.keys = list(index)
        first_rows = np.full(len(index), 0, dtype=np.int64)
        first_rows[self.codes[::-1]] = np.arange(len(codes))[::-1]
        self.firsts = [values[i] for i in first_rows.tolist()]

    @functools.cached_property
    def values(self) -> list[Any]:
        """The column's values (each the first of its kind: equal in type, value and bits)."""
        return [self.firsts[c] for c in self.codes.tolist()]

    @functools.cached_property
    def index(self) -> dict[Any, int]:
        """A value's ``key`` -> its code."""
        return {k: i for i, k in enumerate(self.keys)}

    def subset(self, rows: np.ndarray) -> Factors:
        """The same column at ``rows`` only, renumbered as values first appear there."""
        sub = self.codes[rows]
        present, first = np.unique(sub, return_index=True)
        old = present[np.argsort(first)]  # old codes in order of first appearance
        new = np.empty(len(self.firsts), dtype=np.int64)
        new[old] = np.arange(len(old))
        order = old.tolist()
        f = Factors.__new__(Factors)
        f.codes = new[sub]
        f.firsts = [self.firsts[c] for c in order]
        f.keys = [self.keys[c] for c in order]
        f.types = set(map(type, f.firsts))
        return f

    def codes_of(self, other: Factors) -> np.ndarray:
        """Per row of ``other``, the code of its value in this column's numbering, or -1."""
        if not self.types & other.types:
            return np.full(len(other.codes), -1, dtype=np.int64)
        lookup = np.array([self.index.get(k, -1) for k in other.keys], dtype=np.int64)
        return lookup[other.codes] if len(other.codes) else other.codes


class Context:
    """Earlier columns of the same rows, as ``Factors``, that a column may be coded given."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.columns: list[Factors] = []

    def add(self, values: Sequence[Any], factors: Factors | None = None) -> Factors:
        """A column just coded (or decoded) becomes available to the ones after it
        (``factors``: its ``Factors`` if already made); returns its ``Factors``."""
        self.columns.append(factors if factors is not None else Factors(values))
        return self.columns[-1]

    def subset(self, rows: np.ndarray) -> Context:
        """The same columns restricted to ``rows`` (renumbered as they first appear there)."""
        out = Context(len(rows))
        out.columns = [f.subset(rows) for f in self.columns]
        return out

    def candidates(self) -> list[int]:
        """Columns usable as a context (few enough distinct values, more than one)."""
        return [i for i, f in enumerate(self.columns) if 1 < len(f.firsts) <= MAX_CONTEXT_VALUES]


class ColumnCoder(NamedTuple):
    """How a column derived from another is coded given a context (``conditioned``'s column
    coder, handed down so the typed coders can use it without importing it): a JSON field."""

    put: Callable[[Any, list, Context], Any]
    take: Callable[[Any, int, Context], list]
