"""ANS building blocks shared by the entropy models and the classical baselines (``constriction``).

Plain functions on numpy arrays; nothing here knows an entropy model. A table codes the integers
``0 .. size - 1`` of one channel plus an overflow symbol (``size``) holding the tail mass; a value
outside the table is coded as the overflow symbol followed by its side and distance
(Elias-gamma style, uniform bits), so every finite integer round-trips exactly and every bit it
costs is counted (``escape_bits``). The entropy models (entropy.py) build their tables in
``update()`` and code with them in ``compress()``/``decompress()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import constriction
import numpy as np

_MAX_DISTANCE_BITS = 31  # escaped distances must fit in 31 bits (offsets within about +-2**30)
_CHUNK_BITS = 16  # uniform models in constriction must have fewer than 2**24 symbols

Categorical = constriction.stream.model.Categorical
AnsCoder = constriction.stream.stack.AnsCoder


@dataclass
class CodingReport:
    """Estimated (from likelihoods) vs actually coded size of a batch, and whether it round-trips."""

    num_states: int
    estimated_bits_per_state: float
    coded_bits_per_state: float
    num_bytes: int
    exact: bool


# Pushed first on every stream (two 1s under Uniform(2)), popped last: lifts the empty coder's
# state from 0 to 3 * 2**23, above every 24-bit symbol mass. Below it ANS is not -log2 p: from
# state x < q a symbol moves it to cdf + x, so the symbol with cdf 0 is free and the others
# cost log2 of a sum. On a real run's test split (rows in agent order) the last agent's run of
# one category was coded in 0 bits: its table channels came out 5.7% below their information
# content. Lifted, every symbol pays its -log2 p; the lift's ~25 bits are part of the stream's
# fixed cost (with the final state, ~1.5 words per stream).
_LIFT = constriction.stream.model.Uniform(2)
_LIFT_SYMBOLS = np.ones(2, dtype=np.int32)


def new_coder() -> AnsCoder:
    """An empty ANS stack ready for ``encode_channels`` (see ``_LIFT``)."""
    coder = AnsCoder()
    coder.encode_reverse(_LIFT_SYMBOLS, _LIFT)
    return coder


def to_bytes(coder: AnsCoder) -> bytes:
    """The coder's words as bytes, less the zero high bytes of its last word (at most 3)."""
    data = coder.get_compressed().tobytes()
    trimmed = data.rstrip(b"\0")
    return data[: max(len(trimmed), len(data) - 3)]


def open_coder(data: bytes) -> AnsCoder:
    """The ANS stack ``to_bytes`` wrote ``data`` from."""
    data = data + b"\0" * (-len(data) % 4)
    return AnsCoder(np.frombuffer(data, dtype=np.uint32).copy())


def close_coder(coder: AnsCoder) -> None:
    """Pop ``new_coder``'s lift; raise if the stream was not exactly used up."""
    if not np.array_equal(coder.decode(_LIFT, 2), _LIFT_SYMBOLS) or not coder.is_empty():
        raise ValueError(
            "compressed data does not match these coding tables and shapes: decode with the "
            "weights (and number of states) that encoded it"
        )


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


def encode_escapes(coder: AnsCoder, index: np.ndarray, size: int) -> None:
    """Push side, bit length and residual of out-of-support indices (decoded in that order).

    ``index`` is relative to a table of ``size`` in-support values (0 .. size - 1).
    """
    above, distance = _distance(index, size)
    distance_bits = np.floor(np.log2(distance)).astype(np.int64) + 1
    residual = distance - (np.int64(1) << (distance_bits - 1))
    low_bits, high_bits = _chunk_sizes(distance_bits)
    low_chunk = residual & ((np.int64(1) << low_bits) - 1)
    high_chunk = residual >> low_bits
    uniform = constriction.stream.model.Uniform()
    for bits, chunk in ((high_bits, high_chunk), (low_bits, low_chunk)):
        used = bits > 0
        if used.any():
            sizes = (np.int64(1) << bits[used]).astype(np.int32)
            coder.encode_reverse(chunk[used].astype(np.int32), uniform, sizes)
    coder.encode_reverse(
        (distance_bits - 1).astype(np.int32), constriction.stream.model.Uniform(_MAX_DISTANCE_BITS)
    )
    coder.encode_reverse(above.astype(np.int32), constriction.stream.model.Uniform(2))


def decode_escapes(coder: AnsCoder, count: int, size: int) -> np.ndarray:
    """Pop ``count`` out-of-support indices pushed by ``encode_escapes``."""
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


def encode_channels(coder: AnsCoder, values: np.ndarray, tables: CodingTables) -> None:
    """Push integer ``values`` [N, C], channel c under its table, escapes before its symbols."""
    index = values - tables.lowest
    # A stack: push channels in reverse so that ``decode_channels`` pops them in order.
    for c in reversed(range(index.shape[1])):
        size = tables.sizes[c]
        escaped = (index[:, c] < 0) | (index[:, c] >= size)
        if escaped.any():
            encode_escapes(coder, index[escaped, c], size)
        symbols = np.where(escaped, size, index[:, c]).astype(np.int32)
        coder.encode_reverse(symbols, tables.models[c])


def decode_channels(coder: AnsCoder, num_states: int, tables: CodingTables) -> np.ndarray:
    """Pop the integer values [num_states, C] pushed by ``encode_channels``."""
    index = np.empty((num_states, len(tables.models)), dtype=np.int64)
    for c, (model, size) in enumerate(zip(tables.models, tables.sizes, strict=True)):
        column = coder.decode(model, num_states).astype(np.int64)
        escaped = column == size
        if escaped.any():
            column[escaped] = decode_escapes(coder, int(escaped.sum()), size)
        index[:, c] = column
    return index + tables.lowest
