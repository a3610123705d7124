"""Real bytes for a lossless model: one chunk of grid states <-> two streams, on any machine.

A chunk is ``n`` states in (agent, step) order with ``flag[i]`` true when row ``i - 1`` is the
same agent's previous state (always false without context). Its code is

- the latents z of all rows as integer offsets from the bottleneck's centers, computed by the
  integer encoder (``IntegerEncoder.offsets``) and range-coded under the integer model's
  latent tables;
- the grid symbols, ANS-coded under the integer model's weights given z (and the previous
  row's symbols), decoded in **waves**: wave w holds every run's w-th row (wave 0: first rows,
  absolute head; later waves: delta head given the row before), so each wave is one batched
  network call across agents. Waves are cut into blocks of at most ``BLOCK`` rows; the stream
  holds, block by block, each coding group's symbols (a narrow head's features together, row by
  row; a wide head's one feature at a time), then that group's escapes feature by feature.

Every number that reaches the entropy coder comes from ``IntegerModel`` and ``IntegerEncoder``
(integer arithmetic, ``models/integer_model.py``): other CPU kernels, thread counts, batch
shapes or a GPU compute the same integers, so a file coded on one machine decodes on every
other, and the same model codes the same states into the same bytes everywhere. A chunk header
keeps a CRC of the symbols all the same, so a damaged stream fails loudly.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np
import torch

from meaning_transform.data.context import next_steps_unchanged, steps_unchanged
from meaning_transform.models.bottlenecks.coding import (
    MISMATCH,
    close_decoder,
    decode_channels,
    decode_escapes,
    encode_channels,
    encode_escapes,
    escape_bits,
    new_encoder,
    open_decoder,
    to_bytes,
)
from meaning_transform.models.fixed_point import PRECISION, code_lengths
from meaning_transform.models.integer_export import export, export_encoder
from meaning_transform.models.integer_model import IntegerModel

BLOCK = 4096  # rows per network call
#: fed integer weights q summing to 2**24 - N, constriction codes bin i with q_i + 1 exactly
#: (``fixed_point`` module docstring)
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
_SENTINEL = constriction.stream.model.Uniform(2)


WORKERS = 2  # chunks coded at once without context, each in a thread with one torch thread


def workers_for(model: IntegerModel) -> int:
    """Chunks to code at once: ``WORKERS`` without context; 1 with context, whose hundreds of
    small per-wave steps hold the GIL (two threads measured slower than one there)."""
    return 1 if model.context else WORKERS


def in_order(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int | None = None
) -> Iterator[Any]:
    """``fn(item)`` of each item, in order, ``workers`` (default ``WORKERS``) items at a time
    in threads (numpy and torch release the GIL, so chunks are coded on several cores). Files do
    not depend on ``workers``: the coded numbers are integers."""

    def run(item: Any) -> Any:
        torch.set_num_threads(1)  # per thread with OpenMP: the chunks are the parallelism
        with torch.no_grad():
            return fn(item)

    workers = max(WORKERS if workers is None else workers, 1)
    with ThreadPoolExecutor(workers, thread_name_prefix="codec-chunk") as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(run, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass
class EncodedChunk:
    """The two streams of one chunk and what the model estimated they would cost."""

    num_states: int
    z_words: np.ndarray
    x_words: np.ndarray
    estimated_bits: float
    symbols_crc: int

    @property
    def num_bytes(self) -> int:
        """Bytes of both ANS streams."""
        return 4 * (len(self.z_words) + len(self.x_words))


def symbols_crc(symbols: np.ndarray) -> int:
    """CRC-32 of int64 symbols (a decoded chunk is checked against it)."""
    return zlib.crc32(np.ascontiguousarray(symbols, dtype="<i8").tobytes())


def blocks(flag: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(wave, rows) blocks in decoding order: wave w holds every run's w-th row."""
    n = len(flag)
    start = np.flatnonzero(~flag)
    if n and (len(start) == 0 or start[0] != 0):
        raise ValueError("a chunk's first row cannot have a previous row")
    run_start = np.repeat(start, np.diff(np.append(start, n)))
    pos = np.arange(n) - run_start
    order = np.argsort(pos, kind="stable")
    counts = np.bincount(pos) if n else np.zeros(0, dtype=np.int64)
    out = []
    offset = 0
    for w, c in enumerate(counts.tolist()):
        rows = order[offset : offset + c]
        offset += c
        for b in range(0, c, BLOCK):
            out.append((w, rows[b : b + BLOCK]))
    return out


def _words(data: bytes) -> np.ndarray:
    """Bytes of a range-coded stream as the 32-bit words the container stores (zero-padded)."""
    return np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)


def _float32(q: np.ndarray) -> np.ndarray:
    """Integer weights as constriction reads them: float32 (exact below 2**24), C-contiguous
    (it reads a strided view as if it were contiguous)."""
    return np.ascontiguousarray(q, dtype=np.float32)


def _previous(symbols: np.ndarray, rows: np.ndarray, delta: bool) -> np.ndarray:
    return symbols[rows - 1] if delta else np.zeros((len(rows), symbols.shape[1]), np.int64)


def _latent_bits(model: IntegerModel, offsets: np.ndarray) -> float:
    """Bits the latent tables spend on ``offsets`` [n, D], escapes included."""
    bits = 0.0
    for c, w in enumerate(model.latent_weights):
        size = len(w) - 1  # the overflow bin is last
        index = offsets[:, c] - model.latent_lowest[c]
        escaped = (index < 0) | (index >= size)
        bits += float((PRECISION - np.log2(w[np.where(escaped, size, index)] + 1.0)).sum())
        if escaped.any():
            bits += float(escape_bits(index[escaped], size).sum())
    return bits


def _runs(model: IntegerModel, symbols: np.ndarray, flag: np.ndarray) -> np.ndarray:
    """Each row's unchanged counts (``history``; zeros otherwise)."""
    if model.context == "history":
        return steps_unchanged(symbols, flag)
    return np.zeros(symbols.shape, np.int64)


def _batches(flag: np.ndarray) -> list[tuple[bool, np.ndarray, list[tuple[int, int]]]]:
    """``blocks`` gathered into batches for the encoder, whose rows are all known: (delta head?,
    the batch's rows, each block's [start, end) in them); consecutive blocks of one head, at
    most BLOCK rows (a batch's numbers are those of its blocks: integers do not depend on it)."""
    out: list[tuple[bool, list[np.ndarray], list[tuple[int, int]]]] = []
    for wave, rows in blocks(flag):
        delta = wave > 0
        if not out or out[-1][0] != delta or out[-1][2][-1][1] + len(rows) > BLOCK:
            out.append((delta, [], []))
        start = out[-1][2][-1][1] if out[-1][2] else 0
        out[-1][1].append(rows)
        out[-1][2].append((start, start + len(rows)))
    return [(delta, np.concatenate(rows), spans) for delta, rows, spans in out]


def encode_chunk(
    model: IntegerModel, symbols: np.ndarray, flag: np.ndarray, offsets: np.ndarray
) -> EncodedChunk:
    """Code a chunk's grid symbols [n, F] (rows in (agent, step) order) and latent ``offsets``
    [n, D] (``IntegerEncoder.offsets``) with the integer model."""
    n = len(symbols)
    flag = np.asarray(flag, dtype=bool) & bool(model.context)
    offsets = np.asarray(offsets, dtype=np.int64)
    encoder = new_encoder()
    encode_channels(encoder, offsets, model.latent_tables)
    z_words = _words(to_bytes(encoder))
    estimated = _latent_bits(model, offsets)
    runs = _runs(model, symbols, flag)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.array([1], dtype=np.int32), _SENTINEL)
    for delta, rows, spans in reversed(_batches(flag)):  # a stack: the last block first
        prev = _previous(symbols, rows, delta)
        head = model.head(delta)
        groups = head.groups(head.coef(model.hidden(offsets[rows], prev, flag[rows], runs[rows])))
        layout = head.layout
        index, escaped, rel = layout.index(symbols[rows] - prev if delta else symbols[rows])
        for a, b in reversed(spans):
            has = escaped[a:b].any(axis=0).tolist()
            for features, q in reversed(groups):
                for f in reversed(features):  # decoded after the group's symbols, in order
                    if has[f]:
                        esc = escaped[a:b, f].nonzero()[0] + a
                        encode_escapes(coder, rel[esc, f], int(layout.n[f]))
                        estimated += float(escape_bits(rel[esc, f], int(layout.n[f])).sum())
                picked = index[a:b, features].ravel()
                qb = q[a:b].reshape(-1, q.shape[-1])
                estimated += float(code_lengths(qb, picked).sum())
                coder.encode_reverse(picked.astype(np.int32), _CATEGORICAL, _float32(qb))
    return EncodedChunk(n, z_words, coder.get_compressed(), estimated, symbols_crc(symbols))


def decode_chunk(
    model: IntegerModel, z_words: np.ndarray, x_words: np.ndarray, flag: np.ndarray
) -> np.ndarray:
    """Invert ``encode_chunk``: the grid symbols [n, F]; ValueError if the streams don't fit."""
    n, f_count = len(flag), model.num_features
    flag = np.asarray(flag, dtype=bool) & bool(model.context)
    try:
        decoder = open_decoder(np.asarray(z_words, dtype="<u4").tobytes())
        offsets = decode_channels(decoder, n, model.latent_tables)
    except AssertionError as e:  # constriction: data its model could not have written
        raise ValueError(MISMATCH) from e
    close_decoder(decoder)
    coder = constriction.stream.stack.AnsCoder(np.asarray(x_words, dtype=np.uint32))
    symbols = np.zeros((n, f_count), dtype=np.int64)
    runs = np.zeros((n, f_count), dtype=np.int64)
    history = model.context == "history"
    for wave, rows in blocks(flag):
        delta = wave > 0
        prev = _previous(symbols, rows, delta)
        if delta and history:  # the rows before these were decoded in the previous wave
            runs[rows] = next_steps_unchanged(
                prev, symbols[rows - 2], runs[rows - 1], flag[rows - 1]
            )
        head = model.head(delta)
        groups = head.groups(head.coef(model.hidden(offsets[rows], prev, flag[rows], runs[rows])))
        sizes, escapes, lo, modulo = _tables(head.layout)
        value = np.zeros((len(rows), f_count), dtype=np.int64)
        for features, q in groups:
            index = coder.decode(_CATEGORICAL, _float32(q.reshape(-1, q.shape[-1])))
            value[:, features] = index.reshape(len(rows), len(features))
            for f in features:
                escaped = value[:, f] == sizes[f]
                if escapes[f] and escaped.any():
                    count = int(escaped.sum())
                    value[escaped, f] = decode_escapes(coder, count, sizes[f])
        value += lo
        if delta:
            value += prev
            value[:, modulo] = np.mod(value[:, modulo], head.layout.modulo[modulo])
        symbols[rows] = value
    if coder.decode(_SENTINEL, 1)[0] != 1 or not coder.is_empty():
        raise ValueError("the coded symbols do not fit this model (different model or bytes)")
    return symbols


def _tables(layout: Any) -> tuple[list[int], list[bool], np.ndarray, np.ndarray]:
    """(bins, escape?, lowest value per feature, features taken modulo) of a head layout."""
    return (
        layout.n.tolist(),
        layout.escape.tolist(),
        np.asarray(layout.lo, dtype=np.int64),
        np.flatnonzero(layout.modulo),
    )


@torch.no_grad()
def float_bits(module: Any, symbols: np.ndarray, flag: np.ndarray) -> float:
    """Bits the float model itself prices a chunk at (its latent under the bottleneck, its grid
    symbols under ``log_probs``, escapes included): what the integer model is measured against."""
    codec, bottleneck = module.codec, module.bottleneck
    flag = np.asarray(flag, dtype=bool) & bool(codec.context)
    prev = np.where(flag[:, None], np.roll(symbols, 1, axis=0), 0)
    runs = steps_unchanged(symbols, flag) if codec.context == "history" else None
    ctx = codec.context_input(prev, flag, runs)
    z = bottleneck.quantize(codec.encode(symbols, ctx))
    bits = codec.nll_bits(codec.log_probs(z, ctx, False), symbols, None, False)
    if codec.context:
        delta = codec.nll_bits(codec.log_probs(z, ctx, True), symbols, prev, True)
        bits = torch.where(torch.from_numpy(flag), delta, bits)
    return float(-torch.log2(bottleneck.likelihood(z)).sum()) + float(bits.sum())


def coding_report(module: Any, x: torch.Tensor, context: torch.Tensor | None) -> dict[str, Any]:
    """Code a batch of data-tensor rows (in (agent, step) order) as one chunk with the module's
    integer model and encoder (``integer_export``): estimated vs coded bits per state, whether
    it decodes back exactly, the model's bytes and the float model's own estimate
    (``MeaningModule.code``)."""
    codec = module.codec
    symbols = codec.symbols(x.cpu())
    flag = np.zeros(len(symbols), dtype=bool)
    if context is not None:
        f = codec.num_features
        flag = context[:, f].cpu().numpy() > 0.5
        prev = codec.symbols(context[:, :f].cpu())
        if not np.array_equal(prev[flag], np.roll(symbols, 1, axis=0)[flag]):
            raise ValueError("rows with context must be in (agent, step) order to be coded")
    model = export(codec, module.bottleneck)
    offsets = export_encoder(codec, module.bottleneck).offsets(symbols, flag)
    chunk = encode_chunk(model, symbols, flag, offsets)
    decoded = decode_chunk(model, chunk.z_words, chunk.x_words, flag)
    n = max(len(symbols), 1)
    return {
        "num_states": len(symbols),
        "estimated_bits_per_state": chunk.estimated_bits / n,
        "coded_bits_per_state": 8 * chunk.num_bytes / n,
        "num_bytes": chunk.num_bytes,
        "exact": bool(np.array_equal(decoded, symbols)),
        "coded": ["latent", "grid"],
        "model_bytes": len(model.to_bytes()),
        "float_estimated_bits_per_state": float_bits(module, symbols, flag) / n,
    }
