"""Symbols entropy-coded given a context symbol of the same row (``constriction`` ANS).

For each context value, the counts of the symbols seen with it form a table stored in the
block (integers; the probabilities are count / total, an exact IEEE division, so encoder and
decoder quantize the same floats); the rows with that context are then coded under it. A symbol
that a context determines (a template given ``action_type``) costs nothing beyond its table
entry. Table layout: per context value present (ascending), the number of distinct symbols; the
symbols (ascending); every count but each context's last (that one is what is left of the
context's rows, which the decoder knows).
"""

from __future__ import annotations

import constriction
import numpy as np

from meaning_transform.codec.block_io import Sink, Source
from meaning_transform.codec.numbers import put_ints, take_ints

_FAMILY = constriction.stream.model.Categorical


def _table(symbols: np.ndarray, ctx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique context * k + symbol pairs, their counts)."""
    return np.unique(ctx * k + symbols, return_counts=True)


def cost_bits(symbols: np.ndarray, ctx: np.ndarray, k: int) -> float:
    """Estimated bits: the symbols under their context's counts, plus ~12 bits per table
    entry."""
    pairs, counts = _table(symbols, ctx, k)
    totals = np.bincount(pairs // k, weights=counts)[pairs // k]
    return float((counts * np.log2(totals / counts)).sum()) + 12.0 * len(pairs)


def put_conditional(sink: Sink, symbols: np.ndarray, ctx: np.ndarray, k: int) -> None:
    """``symbols`` (each < ``k``) given the context ``ctx`` of each row."""
    pairs, counts = _table(symbols, ctx, k)
    _, starts, sizes = np.unique(pairs // k, return_index=True, return_counts=True)
    syms = pairs % k
    put_ints(sink, sizes)
    put_ints(sink, syms)
    last = np.zeros(len(pairs), dtype=bool)
    last[starts + sizes - 1] = True
    put_ints(sink, counts[~last])
    groups = _groups(ctx)
    coder = constriction.stream.stack.AnsCoder()
    for rows, start, size in reversed(list(zip(groups, starts, sizes, strict=True))):
        if size == 1:
            continue  # the context determines the symbol
        local = np.searchsorted(syms[start : start + size], symbols[rows])
        c = counts[start : start + size]
        coder.encode_reverse(local.astype(np.int32), _FAMILY(c / c.sum(), perfect=False))
    sink.put(coder.get_compressed().astype("<u4").tobytes())


def _groups(ctx: np.ndarray) -> list[np.ndarray]:
    """The rows of each context value present, in ascending order of the value."""
    order = np.argsort(ctx, kind="stable")
    bounds = np.flatnonzero(np.diff(ctx[order])) + 1
    return np.split(order, bounds) if len(ctx) else []


def take_conditional(src: Source, ctx: np.ndarray, k: int) -> np.ndarray:
    """The symbols written by ``put_conditional`` for rows with context ``ctx``."""
    groups = _groups(ctx)
    sizes = take_ints(src, len(groups))
    if len(sizes) and (sizes.min() < 1 or sizes.max() > min(k, len(ctx))):
        raise src.fail("a context table is invalid")
    total = int(sizes.sum())
    if total > len(ctx):
        raise src.fail("a context table has more entries than rows")
    syms = take_ints(src, total)
    counts = np.zeros(total, dtype=np.int64)
    ends = np.cumsum(sizes)
    last = np.zeros(total, dtype=bool)
    last[ends - 1] = True
    counts[~last] = take_ints(src, total - len(sizes))
    words = src.take()
    if len(words) % 4:
        raise src.fail("an entropy-coded stream is not whole 32-bit words")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
    out = np.zeros(len(ctx), dtype=np.int64)
    for rows, end, size in zip(groups, ends.tolist(), sizes.tolist(), strict=True):
        s, cnt = syms[end - size : end], counts[end - size : end]
        if (
            (np.diff(s) <= 0).any()
            or s.min() < 0
            or s.max() >= k
            or (cnt[:-1] < 1).any()
            or (cnt[:-1] > len(rows)).any()
        ):
            raise src.fail("a context table is invalid")
        cnt[-1] = len(rows) - cnt[:-1].sum()
        if cnt[-1] < 1:
            raise src.fail("a context table's counts exceed its rows")
        if size == 1:
            out[rows] = s[0]
        else:
            local = coder.decode(_FAMILY(cnt / cnt.sum(), perfect=False), len(rows))
            out[rows] = s[local]
    return out
