"""An adaptive context coder for a chunk's grid symbols: no model in the file, no training.

A chunk is ``n`` states in (agent, step) order (``flag[i]``: row ``i - 1`` is the same agent's
previous state) with one small integer of **row context** per state (``context[i]`` in
``0 .. contexts - 1``, e.g. the action the agent took at that step, read from another table).
Rows are coded in **waves** (``chunks.blocks``: wave w holds every agent's w-th state), feature
by feature in schema order, every wave-feature in one vectorized range-coder call:

- wave 0 (an agent's first state): the symbol less a base (the chunk's declared lowest value
  of the feature, or per state a guess the caller makes from other tables, ``first``), over ``FIRST`` bins plus an escape; its counts adapt from group to group;
- later waves: the difference from the agent's previous state over ``-SPAN .. SPAN`` plus an
  escape. Its distribution blends counts of nested contexts (Witten-Bell style, coarse to
  fine): the feature; + its own history (steps since it last changed, capped at ``RUN``, and the
  sign of that change, or the previous value for a binary / categorical feature); + the row
  context; + how many features coded before it in this row changed (0, 1, 2+); and last the
  feature's own history in this wave alone (agents born together change alike: age crosses a
  cell edge in the same wave), which is why waves are cut into groups of 1, 1, 2, 4, ... rows.

Where another table already spells out a state's cell (``hint``, from ``state_hints``: a
move's ``current_position`` in agent_actions' details), its bins are centred on that guess
instead of the previous state or the first-state base, and every level's context says whether
the state had a guess: a right guess then costs a fraction of a bit, a wrong one what a change
would have. Without hints (None) the coder codes exactly as it would without them.

Counts are integers updated after every coded group, so a group's probabilities depend only on
groups before it; they are turned into the integer weights constriction codes exactly
(``fixed_point.frequencies``' contract: weights summing to ``2**24 - K``, bin i coded with
``q_i + 1``) by integer arithmetic alone, so every machine codes and decodes the same bytes.
An escaped value is coded exactly after its group (``coding._escape_symbols``: side, bit length,
raw bits). Counts of a context are halved once they pass ``LIMIT`` (recent states weigh more).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import constriction
import numpy as np

from meaning_transform.codec.chunks import blocks
from meaning_transform.codec.state_hints import NO_HINT
from meaning_transform.models.bottlenecks.coding import (
    MISMATCH,
    RangeDecoder,
    RangeEncoder,
    _escape_symbols,
    decode_escapes,
    escape_bits,
)
from meaning_transform.models.fixed_point import PRECISION, code_lengths

SPAN = 15  # later waves: differences -SPAN..SPAN have a bin of their own
FIRST = 64  # wave 0: values lowest..lowest + FIRST - 1 have a bin of their own
RUN = 16  # steps since a feature last changed, counted up to RUN - 1
LIMIT = 1 << 13  # a context's counts are halved once their total passes this
GROWTH = 256  # groups of a wave double in size up to this many rows
MAX_CONTEXTS = 1 << 10  # row contexts a chunk may declare
MAX_WAVES = 1 << 20  # waves past this share the wave level's contexts
#: per level past the first (own history, + row context, + row changes, the wave): its weight
#: on the escape to the coarser level (higher: its own counts are trusted later)
TRUST = (4, 4, 4, 16)
_ROW_CHANGES = 3  # features that changed before this one in the row: 0, 1, 2 or more
_OWN = RUN * 3  # own history: run length x (last change down / none / up, or value 0 / 1 / 2+)
MAX_HINT_SPAN = 1 << 28  # a guessed cell is kept within this many of the chunk's lowest
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


@dataclass(frozen=True)
class Layout:
    """What a chunk's coder needs besides its symbols: per feature, whether its own history is
    read from its value (binary, categorical) rather than from its changes; the number of row
    contexts; each feature's lowest symbol in the chunk (its declared range)."""

    discrete: tuple[bool, ...]
    contexts: int
    lowest: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.contexts <= MAX_CONTEXTS:
            raise ValueError(f"row contexts must number 1..{MAX_CONTEXTS}, got {self.contexts}")
        if len(self.discrete) != len(self.lowest):
            raise ValueError("one 'discrete' and one 'lowest' per feature")


class _Counts:
    """Integer counts of one context level: a row of bins per context seen so far (a context
    never seen counts zero everywhere), with per-row totals."""

    def __init__(self, bins: int) -> None:
        self.index: dict[int, int] = {}  # context id -> its row
        self.n = np.zeros((16, bins), dtype=np.int64)
        self.total = np.zeros(16, dtype=np.int64)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The rows of contexts ``ids`` (new contexts get new, zero rows)."""
        index = self.index
        found = np.array([index.setdefault(k, len(index)) for k in ids.tolist()], np.int64)
        if len(self.index) > len(self.n):
            grow = max(len(self.index), 2 * len(self.n)) - len(self.n)
            self.n = np.concatenate([self.n, np.zeros((grow, self.n.shape[1]), np.int64)])
            self.total = np.concatenate([self.total, np.zeros(grow, np.int64)])
        return found

    def add(self, rows: np.ndarray, index: np.ndarray) -> None:
        """Count ``index`` in ``rows`` (one per coded symbol), halving rows past LIMIT."""
        np.add.at(self.n, (rows, index), 1)
        np.add.at(self.total, rows, 1)
        over = self.total[rows] > LIMIT
        if over.any():
            full = np.unique(rows[over])
            self.n[full] = (self.n[full] + 1) >> 1
            self.total[full] = self.n[full].sum(axis=1)


def _weights(levels: list[_Counts], ids: list[np.ndarray]) -> np.ndarray:
    """Integer weights [m, K] summing to ``2**PRECISION - K`` per row: the blend of the levels'
    counts (coarse to fine), each level ``p = (n + d * p_coarser) / (N + d)`` with ``d`` the
    number of distinct symbols it has seen (at least 1) times its ``TRUST``; the coarsest over
    a prior of 1/2."""
    w = 2 * levels[0].n[ids[0]] + 1
    s = w.sum(axis=1)
    for level, rows, weight in zip(levels[1:], ids[1:], TRUST[: len(levels) - 1], strict=True):
        n = level.n[rows]
        d = np.maximum((n > 0).sum(axis=1), 1) * weight
        w = n * s[:, None] + d[:, None] * w  # sums below 2**49: exact, also in float64
        s = w.sum(axis=1)
        shift = np.maximum(_bit_length(s) - 30, 0)  # keep sums below 2**30
        w = w >> shift[:, None]
        s = w.sum(axis=1)
    k = w.shape[1]
    free = (1 << PRECISION) - k
    q = (w * free) // s[:, None]  # < 2**30 * 2**24
    q[np.arange(len(q)), w.argmax(axis=1)] += free - q.sum(axis=1)
    return q


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Bit length of positive int64s below 2**53 (exact: they are exact in float64)."""
    return np.frexp(x.astype(np.float64))[1].astype(np.int64)


class _State:
    """The coder's state over one chunk: counts, and each row's history once it is coded."""

    def __init__(self, layout: Layout, n: int) -> None:
        f = len(layout.discrete)
        self.layout = layout
        self.discrete = np.asarray(layout.discrete, dtype=bool)
        self.first = _Counts(FIRST + 1)
        self.levels = [_Counts(2 * SPAN + 2) for _ in range(5)]
        self.symbols = np.zeros((n, f), dtype=np.int64)
        self.run = np.zeros((n, f), dtype=np.int64)  # steps since the last change, capped
        self.sign = np.zeros((n, f), dtype=np.int64)  # last change's sign (0: none yet)

    def own(self, rows: np.ndarray, j: int) -> np.ndarray:
        """Own-history context of feature j for rows (their previous rows are coded)."""
        prev = rows - 1
        third = np.clip(self.symbols[prev, j], 0, 2) if self.discrete[j] else self.sign[prev, j] + 1
        return self.run[prev, j] * 3 + third

    def contexts(
        self, rows: np.ndarray, j: int, ctx: np.ndarray, changed: np.ndarray, wave: int
    ) -> list:
        """Context ids of the levels for feature j of later-wave rows."""
        own = j * _OWN + self.own(rows, j)
        with_ctx = own * self.layout.contexts + ctx
        return [
            np.full(len(rows), j),
            own,
            with_ctx,
            with_ctx * _ROW_CHANGES + changed,
            own * (MAX_WAVES + 1) + min(wave, MAX_WAVES),
        ]

    def record(self, rows: np.ndarray, j: int, delta: np.ndarray | None) -> None:
        """Rows' history of feature j once coded (``delta`` None: agents' first states)."""
        if delta is None:
            self.run[rows, j] = 0
            self.sign[rows, j] = 0
            return
        prev = rows - 1
        same = delta == 0
        self.run[rows, j] = np.where(same, np.minimum(self.run[prev, j] + 1, RUN - 1), 0)
        self.sign[rows, j] = np.where(same, self.sign[prev, j], np.sign(delta))


def _groups(flag: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(wave, rows) in coding order: ``chunks.blocks``, each cut into groups of 1, 1, 2, 4, ...
    rows (so counts learn what a wave's agents do alike before most of them are coded)."""
    out = []
    for wave, rows in blocks(flag):
        start, size = 0, 1
        while start < len(rows):
            out.append((wave, rows[start : start + size]))
            start += size
            size = min(2 * size if start > 1 else 1, GROWTH)
    return out


#: codes one group's bin indices under weights q [m, K] (encoder) or decodes them (decoder);
#: escaped values after them: (relative indices, their table size) -> the same, decoded
Code = Callable[[np.ndarray | None, np.ndarray], np.ndarray]
Escape = Callable[[np.ndarray | None, int, int], np.ndarray]


def _walk(
    layout: Layout,
    flag: np.ndarray,
    context: np.ndarray,
    first: np.ndarray,
    hint: np.ndarray | None,
    code: Code,
    escape: Escape,
    symbols: np.ndarray | None,
) -> np.ndarray:
    """Code (``symbols`` given) or decode (None) a chunk group by group; the symbols."""
    n, f_count = len(flag), len(layout.discrete)
    state = _State(layout, n)
    for wave, rows in _groups(flag):
        later = wave > 0
        changed = np.zeros(len(rows), dtype=np.int64)
        for j in range(f_count):
            if later:
                base, size = state.symbols[rows - 1, j] - SPAN, 2 * SPAN + 1
                ids = state.contexts(rows, j, context[rows], np.minimum(changed, 2), wave)
                levels = state.levels
            else:
                base, size = first[rows, j], FIRST
                ids, levels = [np.full(len(rows), j)], [state.first]
            if hint is not None:  # a guessed cell: the centre of the bins, and a context bit
                guessed = hint[rows, j] != NO_HINT
                base = np.where(guessed, hint[rows, j] - size // 2, base)
                ids = [2 * i + guessed for i in ids]
            rel = None if symbols is None else symbols[rows, j] - base
            index = None if rel is None else np.where((rel < 0) | (rel >= size), size, rel)
            ids = [level.rows(i) for level, i in zip(levels, ids, strict=True)]
            index = code(index, _weights(levels, ids))
            out = index.copy()
            escaped = index == size
            if escaped.any():
                out[escaped] = escape(
                    None if rel is None else rel[escaped], int(escaped.sum()), size
                )
            for level, level_ids in zip(levels, ids, strict=True):
                level.add(level_ids, index)
            value = out + base
            state.symbols[rows, j] = value
            delta = value - state.symbols[rows - 1, j] if later else None
            state.record(rows, j, delta)
            if later:
                changed += delta != 0
    return state.symbols


def _hint(hint: np.ndarray | None, n: int, layout: Layout) -> np.ndarray | None:
    """Each state's guessed cells [n, F] (``NO_HINT``: none; checked), each kept within the
    chunk's lowest symbol and ``MAX_HINT_SPAN`` above it; None: nothing guessed."""
    if hint is None:
        return None
    hint = np.asarray(hint, dtype=np.int64)
    if hint.shape != (n, len(layout.lowest)):
        raise ValueError(f"hints must be [{n}, {len(layout.lowest)}]")
    lowest = np.asarray(layout.lowest, dtype=np.int64)
    kept = np.clip(hint, lowest - MAX_HINT_SPAN, lowest + MAX_HINT_SPAN)
    return np.where(hint == NO_HINT, NO_HINT, kept)


def _first(first: np.ndarray | None, n: int, layout: Layout) -> np.ndarray:
    """Each state's first-state base [n, F]: ``first`` (checked) or the features' lowest."""
    if first is None:
        return np.broadcast_to(np.asarray(layout.lowest, dtype=np.int64), (n, len(layout.lowest)))
    first = np.asarray(first, dtype=np.int64)
    if first.shape != (n, len(layout.lowest)):
        raise ValueError(f"first-state bases must be [{n}, {len(layout.lowest)}]")
    return first


def _check(symbols: np.ndarray | None, flag: np.ndarray, context: np.ndarray, layout: Layout):
    n = len(flag)
    if context.shape != (n,) or (n and (context.min() < 0 or context.max() >= layout.contexts)):
        raise ValueError(f"row contexts must be one per row in 0..{layout.contexts - 1}")
    if symbols is not None and symbols.shape != (n, len(layout.discrete)):
        raise ValueError(f"symbols must be [{n}, {len(layout.discrete)}], got {symbols.shape}")


def encode(
    symbols: np.ndarray,
    flag: np.ndarray,
    context: np.ndarray,
    layout: Layout,
    first: np.ndarray | None = None,
    hint: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """(range-coded words, bits the counts priced the symbols at) of a chunk's grid symbols
    [n, F]; ``flag`` as ``states.same_agent``, ``context`` one row context per row, ``first``
    each row's base should it be an agent's first state (default: the features' lowest)."""
    symbols = np.asarray(symbols, dtype=np.int64)
    flag, context = np.asarray(flag, dtype=bool), np.asarray(context, dtype=np.int64)
    _check(symbols, flag, context, layout)
    first, hint = _first(first, len(flag), layout), _hint(hint, len(flag), layout)
    encoder = RangeEncoder()
    bits = [0.0]

    def code(index: np.ndarray | None, q: np.ndarray) -> np.ndarray:
        assert index is not None
        encoder.encode(index.astype(np.int32), _CATEGORICAL, _float32(q))
        bits[0] += float(code_lengths(q, index).sum())
        return index

    def escape(rel: np.ndarray | None, count: int, size: int) -> np.ndarray:
        assert rel is not None
        for read in _escape_symbols(rel, size):
            encoder.encode(*read)
        bits[0] += float(escape_bits(rel, size).sum())
        return rel

    _walk(layout, flag, context, first, hint, code, escape, symbols)
    return encoder.get_compressed().astype(np.uint32), bits[0]


def decode(
    words: np.ndarray,
    flag: np.ndarray,
    context: np.ndarray,
    layout: Layout,
    first: np.ndarray | None = None,
    hint: np.ndarray | None = None,
) -> np.ndarray:
    """Invert ``encode``: the grid symbols [n, F]; ValueError if the words do not fit."""
    flag, context = np.asarray(flag, dtype=bool), np.asarray(context, dtype=np.int64)
    _check(None, flag, context, layout)
    first, hint = _first(first, len(flag), layout), _hint(hint, len(flag), layout)
    decoder = RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))

    def code(index: np.ndarray | None, q: np.ndarray) -> np.ndarray:
        return decoder.decode(_CATEGORICAL, _float32(q)).astype(np.int64)

    def escape(rel: np.ndarray | None, count: int, size: int) -> np.ndarray:
        return decode_escapes(decoder, count, size)

    try:
        symbols = _walk(layout, flag, context, first, hint, code, escape, None)
    except (
        AssertionError,
        RuntimeError,
        OverflowError,
        IndexError,
    ) as e:  # constriction on foreign bytes
        raise ValueError(MISMATCH) from e
    if not decoder.maybe_exhausted():
        raise ValueError(MISMATCH)
    return symbols


def _float32(q: np.ndarray) -> np.ndarray:
    """Integer weights as constriction reads them (exact in float32, C-contiguous)."""
    return np.ascontiguousarray(q, dtype=np.float32)
