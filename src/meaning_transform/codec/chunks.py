"""Real bytes for a lossless model: one chunk of grid states <-> two ANS streams.

A chunk is ``n`` states in (agent, step) order with ``flag[i]`` true when row ``i - 1`` is the
same agent's previous state (always false without context). Its code is

- the latents z of all rows, coded with the entropy bottleneck's tables (``coding.compress``);
- the grid symbols, coded under the probabilities the model's decoder gives from z (and the
  previous row's symbols), decoded in **waves**: wave w holds every run's w-th row (wave 0:
  first rows, absolute head; later waves: delta head given the row before), so each wave is one
  batched network call across agents. Waves are cut into blocks of at most ``BLOCK`` rows.

Encoder and decoder must compute bit-identical probabilities: both evaluate the network on the
same blocks (same rows, same batch shape) in eval mode and float32, with one torch thread
(``deterministic_threads``). A chunk header keeps a CRC of the symbols, so a machine that
computes different floats fails loudly instead of writing a wrong database.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np
import torch

from meaning_transform.data.context import next_steps_unchanged, steps_unchanged
from meaning_transform.models.bottlenecks.coding import (
    decode_escapes,
    encode_escapes,
    escape_bits,
)

BLOCK = 4096  # rows per network call
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
_SENTINEL = constriction.stream.model.Uniform(2)


@contextmanager
def deterministic_threads() -> Iterator[None]:
    """One torch thread while coding, so float results cannot depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


WORKERS = 2  # chunks coded at once without context, each in a thread with one torch thread


def workers_for(module: Any) -> int:
    """Chunks to code at once: ``WORKERS`` without context; 1 with context, whose hundreds of
    small per-wave steps hold the GIL (two threads measured slower than one there)."""
    return 1 if module.codec.context else WORKERS


def in_order(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int | None = None
) -> Iterator[Any]:
    """``fn(item)`` of each item, in order, ``workers`` (default ``WORKERS``) items at a time
    in threads (torch releases the GIL, so chunks are coded on several cores). Each call runs with one torch
    thread, so its floats are those of a sequential run: files do not depend on ``workers``."""

    def run(item: Any) -> Any:
        torch.set_num_threads(1)  # per thread with OpenMP
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


def _block_probs(
    codec: Any, z: torch.Tensor, prev: np.ndarray, flag: np.ndarray, runs: np.ndarray, delta: bool
) -> list[np.ndarray]:
    """Per feature, float32 probabilities [B, size] of a block's symbols (identical on both
    sides: same rows, same calls)."""
    return codec.probabilities(z, codec.context_input(prev, flag, runs), delta)


def _words(data: bytes) -> np.ndarray:
    """Bytes of a range-coded stream as the 32-bit words the container stores (zero-padded)."""
    return np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)


def _previous(symbols: np.ndarray, rows: np.ndarray, delta: bool) -> np.ndarray:
    return symbols[rows - 1] if delta else np.zeros((len(rows), symbols.shape[1]), np.int64)


@torch.no_grad()
def encode_chunk(module: Any, symbols: np.ndarray, flag: np.ndarray) -> EncodedChunk:
    """Code a chunk's grid symbols [n, F] (rows in (agent, step) order) with ``module``."""
    codec, bottleneck = module.codec, module.bottleneck
    n = len(symbols)
    flag = np.asarray(flag, dtype=bool) & bool(codec.context)
    prev_all = np.where(flag[:, None], np.roll(symbols, 1, axis=0), 0)
    history = codec.context == "history"  # only history reads the counts
    runs = steps_unchanged(symbols, flag) if history else np.zeros(symbols.shape, np.int64)
    ctx_all = codec.context_input(prev_all, flag, runs)  # row by row: a block's rows of it
    mu = codec.encode(symbols, ctx_all)
    z_bytes = bottleneck.compress(mu)
    z_words = _words(z_bytes)
    z = bottleneck.decompress(z_bytes, (n, codec.latent_dim))
    estimated = float(-torch.log2(bottleneck.likelihood(z)).sum()) if n else 0.0

    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.array([1], dtype=np.int32), _SENTINEL)
    for wave, rows in reversed(blocks(flag)):
        delta = wave > 0
        prev = _previous(symbols, rows, delta)
        ctx = None if ctx_all is None else ctx_all[rows]  # = context_input of the block
        probs = codec.probabilities(z[rows], ctx, delta)
        layout = codec.layout(delta)
        index, escaped, rel = codec.targets(symbols[rows], prev, delta)
        for f in reversed(range(symbols.shape[1])):
            p = probs[f]
            estimated -= float(np.log2(p[np.arange(len(rows)), index[:, f]]).sum())
            esc = escaped[:, f]
            if esc.any():
                encode_escapes(coder, rel[esc, f], int(layout.n[f]))
                estimated += float(escape_bits(rel[esc, f], int(layout.n[f])).sum())
            coder.encode_reverse(index[:, f].astype(np.int32), _CATEGORICAL, p)
    return EncodedChunk(n, z_words, coder.get_compressed(), estimated, symbols_crc(symbols))


@torch.no_grad()
def decode_chunk(
    module: Any, z_words: np.ndarray, x_words: np.ndarray, flag: np.ndarray
) -> np.ndarray:
    """Invert ``encode_chunk``: the grid symbols [n, F]; ValueError if the streams don't fit."""
    codec, bottleneck = module.codec, module.bottleneck
    n, f_count = len(flag), codec.num_features
    flag = np.asarray(flag, dtype=bool) & bool(codec.context)
    z = bottleneck.decompress(np.asarray(z_words, dtype="<u4").tobytes(), (n, codec.latent_dim))
    coder = constriction.stream.stack.AnsCoder(np.asarray(x_words, dtype=np.uint32))
    symbols = np.zeros((n, f_count), dtype=np.int64)
    runs = np.zeros((n, f_count), dtype=np.int64)
    history = codec.context == "history"
    for wave, rows in blocks(flag):
        delta = wave > 0
        prev = _previous(symbols, rows, delta)
        if delta and history:  # the rows before these were decoded in the previous wave
            runs[rows] = next_steps_unchanged(
                prev, symbols[rows - 2], runs[rows - 1], flag[rows - 1]
            )
        probs = _block_probs(codec, z[rows], prev, flag[rows], runs[rows], delta)
        sizes, escapes, lo, modulo = _tables(codec.layout(delta))
        value = np.empty((len(rows), f_count), dtype=np.int64)
        for f in range(f_count):
            index = coder.decode(_CATEGORICAL, probs[f])
            value[:, f] = index
            if escapes[f]:
                escaped = index == sizes[f]
                if escaped.any():
                    count = int(escaped.sum())
                    value[escaped, f] = decode_escapes(coder, count, sizes[f])
        value += lo
        if delta:
            value += prev
            value[:, modulo] = np.mod(value[:, modulo], codec.layout(delta).modulo[modulo])
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


def coding_report(module: Any, x: torch.Tensor, context: torch.Tensor | None) -> dict[str, Any]:
    """Code a batch of data-tensor rows (in (agent, step) order) as one chunk: estimated vs
    coded bits per state, and whether it decodes back exactly (``MeaningModule.code``)."""
    codec = module.codec
    symbols = codec.symbols(x.cpu())
    flag = np.zeros(len(symbols), dtype=bool)
    if context is not None:
        f = codec.num_features
        flag = context[:, f].cpu().numpy() > 0.5
        prev = codec.symbols(context[:, :f].cpu())
        if not np.array_equal(prev[flag], np.roll(symbols, 1, axis=0)[flag]):
            raise ValueError("rows with context must be in (agent, step) order to be coded")
    with deterministic_threads():
        chunk = encode_chunk(module, symbols, flag)
        decoded = decode_chunk(module, chunk.z_words, chunk.x_words, flag)
    n = max(len(symbols), 1)
    return {
        "num_states": len(symbols),
        "estimated_bits_per_state": chunk.estimated_bits / n,
        "coded_bits_per_state": 8 * chunk.num_bytes / n,
        "num_bytes": chunk.num_bytes,
        "exact": bool(np.array_equal(decoded, symbols)),
        "coded": ["latent", "grid"],
    }
