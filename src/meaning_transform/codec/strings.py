"""Byte-string columns (TEXT as its UTF-8 bytes, BLOB as is): a dictionary or the bytes in a row.

``DICT``: the distinct values in order of first appearance, then one index per row (ids,
categories, repeated JSON); ``PLAIN``: the lengths, then all bytes back to back. The smaller by
``Sink.estimate`` is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from meaning_transform.codec.block_io import Sink, Source
from meaning_transform.codec.numbers import put_ints, take_ints

PLAIN, DICT = 0, 1


def _put_plain(sink: Sink, values: Sequence[bytes]) -> None:
    put_ints(sink, np.fromiter(map(len, values), dtype=np.int64, count=len(values)))
    sink.put(b"".join(values))


def _take_plain(src: Source, n: int) -> list[bytes]:
    lengths = take_ints(src, n)
    data = src.take()
    if n and (lengths.min() < 0 or lengths.max() > len(data) or lengths.sum() != len(data)):
        raise src.fail("string lengths do not add up to their bytes")
    if not n and data:
        raise src.fail("bytes without strings")
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]] if n else []
    return [data[a:b] for a, b in zip(starts, ends, strict=True)]


def put_byte_strings(sink: Sink, values: Sequence[bytes]) -> None:
    """``values`` (their count is the reader's to know)."""
    plain = Sink()
    plain.plan.uint(PLAIN)
    _put_plain(plain, values)
    index: dict[bytes, int] = {}
    ids = np.fromiter((index.setdefault(v, len(index)) for v in values), np.int64, len(values))
    if len(index) == len(values):
        sink.extend(plain)
        return
    coded = Sink()
    coded.plan.uint(DICT)
    coded.plan.uint(len(index))
    _put_plain(coded, list(index))
    put_ints(coded, ids)
    sink.extend(coded if coded.estimate() < plain.estimate() else plain)


def take_byte_strings(src: Source, n: int, text: bool = False) -> list[Any]:
    """``n`` values written by ``put_byte_strings`` (``text``: as str, ``surrogateescape``;
    a dictionary's words are decoded once and shared by their rows)."""
    mode = src.plan.uint(DICT, "a string coding")
    if mode == PLAIN:
        return _decoded(_take_plain(src, n), text)
    k = src.plan.uint(n, "a dictionary size")
    src.count(k)
    words = _decoded(_take_plain(src, k), text)
    ids = take_ints(src, n)
    if n and (ids.min() < 0 or ids.max() >= k):
        raise src.fail("a dictionary index is out of range")
    return [words[i] for i in ids.tolist()]


def _decoded(words: list[bytes], text: bool) -> list[Any]:
    return [w.decode("utf-8", "surrogateescape") for w in words] if text else words
