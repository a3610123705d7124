"""Real bytes for the entropy bottleneck: ANS-code its quantized latents with ``constriction``.

Each channel gets a categorical model over the integer offsets (from the median) that its learned
quantiles cover, plus one overflow bin holding the tail mass. A value outside the support is coded
as the overflow symbol followed by its side and distance (Elias-gamma style, uniform bits), so
every finite latent round-trips exactly and every bit it costs is counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from .base import Latent
from .entropy import EntropyBottleneck

_MAX_DISTANCE_BITS = 31  # escaped distances must fit in 31 bits (offsets within about +-2**30)
_CHUNK_BITS = 16  # uniform models in constriction must have fewer than 2**24 symbols


@dataclass
class CodingReport:
    """Estimated (from likelihoods) vs actually coded size of a batch of latents."""

    num_states: int
    estimated_bits_per_state: float
    coded_bits_per_state: float
    num_bytes: int
    exact: bool


@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Temporarily switch ``module`` to eval mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _support(bottleneck: EntropyBottleneck) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel lowest and highest integer offset from the median covered by the pmf."""
    q = bottleneck.quantiles.detach()[:, 0, :].cpu()
    centers = bottleneck.centers.detach().cpu()
    lowest = torch.floor(q[:, 0] - centers).clamp_max(0)
    highest = torch.ceil(q[:, 2] - centers).clamp_min(0)
    return lowest.long().numpy(), highest.long().numpy()


@torch.no_grad()
def _pmf_tables(bottleneck: EntropyBottleneck) -> tuple[np.ndarray, list[np.ndarray]]:
    """Lowest offset per channel and its pmf over the support with the overflow bin last."""
    lowest, highest = _support(bottleneck)
    lengths = highest - lowest + 1
    centers = bottleneck.centers
    grid = torch.arange(int(lengths.max()))[:, None] + torch.from_numpy(lowest)[None, :]
    # Same float arithmetic as ``quantize`` so the pmf is evaluated at the very values coded.
    grid = grid.to(centers) + centers
    probs = bottleneck.likelihood(grid).double().cpu().numpy()  # [L, D]

    edges = torch.from_numpy(np.stack([lowest - 0.5, highest + 0.5], axis=1)).to(centers)
    edges = edges + centers[:, None]
    logits = bottleneck._logits_cumulative(edges[:, None, :])[:, 0, :]  # [D, 2]
    tails = torch.sigmoid(logits[:, 0]) + torch.sigmoid(-logits[:, 1])
    tails = tails.double().cpu().numpy()

    pmfs = [np.append(probs[: lengths[c], c], tails[c]) for c in range(len(lowest))]
    return lowest, pmfs


def _offsets(bottleneck: EntropyBottleneck, z: torch.Tensor) -> np.ndarray:
    """Integer offsets from the grid centers, [N, D], exactly as the eval forward rounds."""
    offsets = torch.round(z.detach() - bottleneck.centers)
    if not torch.isfinite(offsets).all():
        raise ValueError("cannot code non-finite latents; check the encoder output for NaN/inf")
    if offsets.abs().max() >= 2 ** (_MAX_DISTANCE_BITS - 1):
        raise ValueError(
            f"latent offsets must be below 2**{_MAX_DISTANCE_BITS - 1} in magnitude, "
            f"found {offsets.abs().max().item():.3g}"
        )
    return offsets.long().cpu().numpy()


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


def escape_bits(index: np.ndarray, size: int) -> np.ndarray:
    """Bits ``encode_escapes`` spends on each out-of-support index (beyond the escape symbol):
    a side bit, the bit length (uniform over 31) and the bits below the leading one."""
    _, distance = _distance(index, size)
    return 1.0 + np.log2(_MAX_DISTANCE_BITS) + np.floor(np.log2(distance))


def encode_escapes(coder: constriction.stream.stack.AnsCoder, index: np.ndarray, size: int) -> None:
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


def decode_escapes(coder: constriction.stream.stack.AnsCoder, count: int, size: int) -> np.ndarray:
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


def _categorical(pmf: np.ndarray) -> constriction.stream.model.Categorical:
    """The fixed-point model built identically by encoder and decoder."""
    return constriction.stream.model.Categorical(pmf, perfect=False)


@torch.no_grad()
def compress(bottleneck: EntropyBottleneck, z: torch.Tensor) -> tuple[np.ndarray, dict[str, int]]:
    """Quantize ``z`` [N, D] like the eval forward and ANS-code it into uint32 words."""
    offsets = _offsets(bottleneck, z)
    lowest, pmfs = _pmf_tables(bottleneck)
    coder = constriction.stream.stack.AnsCoder()
    # A stack: push channels (and each channel's escapes before its symbols) in reverse.
    for c in reversed(range(offsets.shape[1])):
        size = len(pmfs[c]) - 1
        index = offsets[:, c] - lowest[c]
        escaped = (index < 0) | (index >= size)
        if escaped.any():
            encode_escapes(coder, index[escaped], size)
        symbols = np.where(escaped, size, index).astype(np.int32)
        coder.encode_reverse(symbols, _categorical(pmfs[c]))
    meta = {"num_states": offsets.shape[0], "latent_dim": offsets.shape[1]}
    return coder.get_compressed(), meta


@torch.no_grad()
def decompress(
    bottleneck: EntropyBottleneck, data: np.ndarray, meta: dict[str, int]
) -> torch.Tensor:
    """Decode ``compress``'s words back to the quantized latents [N, D], bit for bit."""
    num_states, latent_dim = meta["num_states"], meta["latent_dim"]
    if latent_dim != bottleneck.latent_dim:
        raise ValueError(
            f"data has latent_dim {latent_dim} but the bottleneck has {bottleneck.latent_dim}"
        )
    lowest, pmfs = _pmf_tables(bottleneck)
    coder = constriction.stream.stack.AnsCoder(np.asarray(data, dtype=np.uint32))
    offsets = np.empty((num_states, latent_dim), dtype=np.int64)
    for c in range(latent_dim):
        size = len(pmfs[c]) - 1
        index = coder.decode(_categorical(pmfs[c]), num_states).astype(np.int64)
        escaped = index == size
        if escaped.any():
            index[escaped] = decode_escapes(coder, int(escaped.sum()), size)
        offsets[:, c] = index + lowest[c]
    centers = bottleneck.centers
    return torch.from_numpy(offsets).to(centers) + centers


def code_latents(bottleneck: EntropyBottleneck, z: torch.Tensor) -> CodingReport:
    """Code ``z`` for real and compare the bits with what the eval forward estimates."""
    with torch.no_grad(), _eval_mode(bottleneck):
        out = bottleneck(Latent(z=z, mu=z))
        data, meta = compress(bottleneck, z)
        decoded = decompress(bottleneck, data, meta)
    num_states = z.shape[0]
    return CodingReport(
        num_states=num_states,
        estimated_bits_per_state=out.rate_bits.sum().item() / num_states,
        coded_bits_per_state=32 * len(data) / num_states,
        num_bytes=4 * len(data),
        exact=torch.equal(decoded, out.z),
    )
