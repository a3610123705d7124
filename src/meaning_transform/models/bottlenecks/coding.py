"""Entropy-coding building blocks shared by the entropy models and the classical baselines.

Plain functions on numpy arrays (``constriction``); nothing here knows an entropy model. A table codes the integers
``0 .. size - 1`` of one channel plus an overflow symbol (``size``) holding the tail mass; a value
outside the table is coded as the overflow symbol followed by its side and distance
(Elias-gamma style, uniform bits), so every finite integer round-trips exactly and every bit it
costs is counted (``escape_bits``). The entropy models (entropy.py) build their tables in
``update()`` and code with them in ``compress()``/``decompress()``, through a range coder
(``new_encoder``); the baselines use an ANS stack (``encode_escapes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import constriction
import numpy as np

_MAX_DISTANCE_BITS = 31  # escaped distances must fit in 31 bits (offsets within about +-2**30)
_CHUNK_BITS = 16  # uniform models in constriction must have fewer than 2**24 symbols

Categorical = constriction.stream.model.Categorical
AnsCoder = constriction.stream.stack.AnsCoder


class CodingPart(Protocol):
    """What ``entropy.code_jointly`` codes values [N, D] with: the bits it expects, the values
    it codes (``quantize``), and writing and reading them on a shared range-coded stream."""

    training: bool

    def train(self, mode: bool = True) -> Any: ...

    def estimate_bits(self, z: Any) -> float: ...

    def quantize(self, z: Any) -> Any: ...

    def encode(self, encoder: Any, z: Any) -> None: ...

    def decode(self, decoder: Any, num_states: int) -> Any: ...


@dataclass
class CodingReport:
    """Estimated (from likelihoods) vs actually coded size of a batch, and whether it round-trips."""

    num_states: int
    estimated_bits_per_state: float
    coded_bits_per_state: float
    num_bytes: int
    exact: bool


# The entropy models' streams are range coded, not ANS: an ANS stack starts at state 0, and
# below a symbol's mass q it does not code -log2 p (from state x < q a symbol moves it to
# cdf + x: the symbol with cdf 0 is free, the others cost log2 of a sum). On a real run's test
# split (rows in agent order) the last agent's run of one category was coded in 0 bits, its
# table channels 5.7% below their information content; lifting the state above 2**24 first
# fixes that but costs ~25 bits per stream. A range coder codes every symbol at -log2 p from
# the start and its end costs ~16 bits (measured: mean 16, at most 33, over 400 streams).
RangeEncoder = constriction.stream.queue.RangeEncoder
RangeDecoder = constriction.stream.queue.RangeDecoder


def new_encoder() -> RangeEncoder:
    """An empty stream for ``encode_channels``."""
    return RangeEncoder()


def to_bytes(encoder: RangeEncoder) -> bytes:
    """The stream's words as bytes, less the zero high bytes of its last word (at most 3)."""
    data = encoder.get_compressed().tobytes()
    trimmed = data.rstrip(b"\0")
    return data[: max(len(trimmed), len(data) - 3)]


def open_decoder(data: bytes) -> RangeDecoder:
    """A decoder of the stream ``to_bytes`` wrote ``data`` from."""
    data = data + b"\0" * (-len(data) % 4)
    return RangeDecoder(np.frombuffer(data, dtype=np.uint32).copy())


MISMATCH = (
    "compressed data does not match these coding tables and shapes: decode with the weights "
    "(and number of states) that encoded it"
)


def close_decoder(decoder: RangeDecoder) -> None:
    """Raise if the stream holds more than was decoded (other weights or shapes). A check, not
    a guarantee: data coded under other tables can also decode to wrong values unnoticed."""
    if not decoder.maybe_exhausted():
        raise ValueError(MISMATCH)


def _chunk_sizes(distance_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bits in the low and high chunk of each distance's residual (below its leading one)."""
    residual_bits = distance_bits - 1
    low = np.minimum(residual_bits, _CHUNK_BITS)
    return low, residual_bits - low


def _distance(index: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(above the support?, distance >= 1 past it) of out-of-support indices."""
    above = index >= size
    distance = np.where(above, index - size + 1, -index)
    if distance.size and distance.max() >= 2 ** (_MAX_DISTANCE_BITS - 1):
        raise ValueError(f"escaped value {int(distance.max())} past its table is too far to code")
    return above, distance


def check_codable(offsets: np.ndarray) -> None:
    """Raise if integer ``offsets`` are non-finite or too large for ``encode_escapes``."""
    if not np.isfinite(offsets).all():
        raise ValueError("cannot code non-finite latents; check the encoder output for NaN/inf")
    if offsets.size and np.abs(offsets).max() >= 2 ** (_MAX_DISTANCE_BITS - 1):
        raise ValueError(
            f"latent offsets must be below 2**{_MAX_DISTANCE_BITS - 1} in magnitude, "
            f"found {np.abs(offsets).max():.3g}"
        )


def escape_bits(index: np.ndarray, size: int) -> np.ndarray:
    """Bits ``encode_escapes`` spends on each out-of-support index (beyond the escape symbol):
    a side bit, the bit length (uniform over 31) and the bits below the leading one."""
    _, distance = _distance(index, size)
    return 1.0 + np.log2(_MAX_DISTANCE_BITS) + np.floor(np.log2(distance))


def _escape_symbols(index: np.ndarray, size: int) -> list[tuple]:
    """``decode_escapes``'s reads, in its order: (symbols, model[, per-symbol sizes]) each."""
    above, distance = _distance(index, size)
    distance_bits = np.floor(np.log2(distance)).astype(np.int64) + 1
    residual = distance - (np.int64(1) << (distance_bits - 1))
    low_bits, high_bits = _chunk_sizes(distance_bits)
    low_chunk = residual & ((np.int64(1) << low_bits) - 1)
    high_chunk = residual >> low_bits
    reads: list[tuple] = [
        (above.astype(np.int32), constriction.stream.model.Uniform(2)),
        (
            (distance_bits - 1).astype(np.int32),
            constriction.stream.model.Uniform(_MAX_DISTANCE_BITS),
        ),
    ]
    for bits, chunk in ((low_bits, low_chunk), (high_bits, high_chunk)):
        used = bits > 0
        if used.any():
            sizes = (np.int64(1) << bits[used]).astype(np.int32)
            reads.append((chunk[used].astype(np.int32), constriction.stream.model.Uniform(), sizes))
    return reads


def encode_escapes(coder: AnsCoder, index: np.ndarray, size: int) -> None:
    """Push side, bit length and residual of out-of-support indices onto an ANS stack (decoded
    in that order by ``decode_escapes``).

    ``index`` is relative to a table of ``size`` in-support values (0 .. size - 1).
    """
    for read in reversed(_escape_symbols(index, size)):  # a stack: pushed in reverse
        coder.encode_reverse(*read)


def decode_escapes(coder: AnsCoder | RangeDecoder, count: int, size: int) -> np.ndarray:
    """Read ``count`` out-of-support indices written by ``encode_escapes`` (ANS) or
    ``encode_channels`` (range coder)."""
    above = coder.decode(constriction.stream.model.Uniform(2), count).astype(bool)
    uniform_bits = constriction.stream.model.Uniform(_MAX_DISTANCE_BITS)
    distance_bits = coder.decode(uniform_bits, count).astype(np.int64) + 1
    low_bits, high_bits = _chunk_sizes(distance_bits)
    chunks = []
    for bits in (low_bits, high_bits):
        chunk = np.zeros(count, dtype=np.int64)
        used = bits > 0
        if used.any():
            sizes = (np.int64(1) << bits[used]).astype(np.int32)
            chunk[used] = coder.decode(constriction.stream.model.Uniform(), sizes)
        chunks.append(chunk)
    residual = chunks[0] + (chunks[1] << low_bits)
    distance = residual + (np.int64(1) << (distance_bits - 1))
    return np.where(above, size - 1 + distance, -distance)


def categorical(pmf: np.ndarray) -> Categorical:
    """The fixed-point model of ``pmf`` (overflow bin last), built identically on both sides."""
    return Categorical(np.asarray(pmf, dtype=np.float64), perfect=False)


@dataclass(frozen=True)
class CodingTables:
    """Per-channel coding tables: channel c codes the integers ``lowest[c] + (0 .. sizes[c] - 1)``
    under ``models[c]`` (from ``pmfs[c]``, the float pmf with the overflow bin last)."""

    lowest: np.ndarray
    pmfs: tuple[np.ndarray, ...]
    models: tuple[Categorical, ...]

    @classmethod
    def from_pmfs(cls, lowest: np.ndarray, pmfs: Sequence[np.ndarray]) -> CodingTables:
        """Tables (and their fixed-point models) of these pmfs, overflow bin last."""
        return cls(np.asarray(lowest), tuple(pmfs), tuple(categorical(p) for p in pmfs))

    @property
    def sizes(self) -> list[int]:
        """In-support values per channel (the index of its overflow symbol)."""
        return [len(p) - 1 for p in self.pmfs]


def encode_channels(encoder: RangeEncoder, values: np.ndarray, tables: CodingTables) -> None:
    """Write integer ``values`` [N, C], channel c under its table, each channel's escapes after
    its symbols."""
    index = values - tables.lowest
    for c in range(index.shape[1]):
        size = tables.sizes[c]
        escaped = (index[:, c] < 0) | (index[:, c] >= size)
        encoder.encode(np.where(escaped, size, index[:, c]).astype(np.int32), tables.models[c])
        if escaped.any():
            for read in _escape_symbols(index[escaped, c], size):
                encoder.encode(*read)


def decode_channels(decoder: RangeDecoder, num_states: int, tables: CodingTables) -> np.ndarray:
    """Read the integer values [num_states, C] written by ``encode_channels``."""
    index = np.empty((num_states, len(tables.models)), dtype=np.int64)
    for c, (model, size) in enumerate(zip(tables.models, tables.sizes, strict=True)):
        column = decoder.decode(model, num_states).astype(np.int64)
        escaped = column == size
        if escaped.any():
            column[escaped] = decode_escapes(decoder, int(escaped.sum()), size)
        index[:, c] = column
    return index + tables.lowest
