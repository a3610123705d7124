"""``compression=vq``: vector quantization with an EMA codebook (vector-quantize-pytorch)."""

from __future__ import annotations

import math

import numpy as np
import torch

from meaning_transform.models.bottlenecks.base import Bottleneck, BottleneckOutput, Latent
from meaning_transform.models.bottlenecks.coding import RangeDecoder, RangeEncoder, categorical

#: every code keeps at least this share of a uniform code's probability in the usage table
USAGE_FLOOR = 1e-3


def usage_bits(codes: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-state -log2 of each code's empirical frequency, and the code histogram.

    The mean of the per-state bits is the entropy of code usage: the rate an ideal entropy coder
    fitted to this usage would spend.
    """
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).to(torch.float32)
    probs = counts / counts.sum().clamp_min(1.0)
    return -torch.log2(probs[codes].clamp_min(1e-12)), counts


def entropy_bits(counts: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of a code histogram."""
    probs = counts / counts.sum().clamp_min(1.0)
    nz = probs[probs > 0]
    return -(nz * torch.log2(nz)).sum()


class VQBottleneck(Bottleneck):
    """One codebook of ``K`` codes; EMA updates, k-means init and dead-code expiry on by default.

    ``level`` sets the codebook size: ``K = max(2, round(num_embeddings / level))`` (higher level,
    fewer codes, fewer bits). Rate: the entropy of code usage in bits per state (over the batch in
    training, over the whole epoch in validation); ``log2(K)`` is the fixed-length rate.

    Dead codes: a code whose EMA count of assignments per batch falls below the threshold is
    moved onto a random vector of the current batch. The library's threshold is an absolute
    count per batch, but a code's expected count is ``batch / K``: with 64 states per batch and
    64 codes it is 1, so the library default of 2 marks *every* code dead, and the codebook is
    re-seeded from each batch for the whole run (no code lives long enough for the decoder to
    learn it). So by default (``threshold_ema_dead_code=None``) the threshold is relative:
    ``dead_code_fraction * batch / K`` -- a code is dead when it gets under that fraction of a
    uniform share -- recomputed from every training batch (stateless, so resumes are exact). A
    number sets the absolute library threshold instead; 0 turns expiry off.
    """

    kind = "vq"

    def __init__(
        self,
        latent_dim: int,
        level: float = 1.0,
        num_embeddings: int = 512,
        commitment_cost: float = 0.25,
        decay: float = 0.9,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        threshold_ema_dead_code: float | None = None,
        dead_code_fraction: float = 0.1,
    ) -> None:
        super().__init__(latent_dim, level)
        if num_embeddings < 2:
            raise ValueError(f"compression.num_embeddings must be >= 2, got {num_embeddings}")
        if not 0 < decay < 1:
            raise ValueError(f"compression.decay must be in (0, 1), got {decay}")
        if threshold_ema_dead_code is not None and threshold_ema_dead_code < 0:
            raise ValueError(
                f"compression.threshold_ema_dead_code must be >= 0 or null, "
                f"got {threshold_ema_dead_code}"
            )
        if not 0 <= dead_code_fraction < 1:
            raise ValueError(
                f"compression.dead_code_fraction must be in [0, 1), got {dead_code_fraction}"
            )
        self.codebook_size = max(2, round(num_embeddings / self.level))
        self.dead_code_fraction = float(dead_code_fraction)
        self.relative_threshold = threshold_ema_dead_code is None and dead_code_fraction > 0
        # Relative mode: any positive value switches the library's expiry on; the real threshold
        # is set from each batch in forward.
        absolute = 1.0 if self.relative_threshold else float(threshold_ema_dead_code or 0.0)
        # imported here: metrics.py needs this module's entropy_bits, not the VQ library (0.2 s)
        from vector_quantize_pytorch import VectorQuantize

        self.vq = VectorQuantize(
            dim=latent_dim,
            codebook_size=self.codebook_size,
            decay=decay,
            commitment_weight=commitment_cost,
            kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=absolute,
        )

    @property
    def fixed_rate_bits(self) -> float:
        """Bits per state of a fixed-length code: log2(K)."""
        return math.log2(self.codebook_size)

    def usage_coder(self) -> UsageCoder:
        """The indices' coder: the codebook's usage over training (its EMA assignment counts)."""
        return UsageCoder(self.vq._codebook.cluster_size)

    def _set_dead_code_threshold(self, batch: int) -> None:
        """Relative mode: this batch's threshold, and the count a re-seeded code starts at.

        A re-seeded code starts at a full uniform share (``batch / K``), not at the threshold
        (the library's choice): at the threshold it would be dead again one unused step later.
        """
        codebook = self.vq._codebook
        share = batch / self.codebook_size
        codebook.threshold_ema_dead_code = self.dead_code_fraction * share
        codebook.reset_cluster_size = share

    def forward(self, latent: Latent) -> BottleneckOutput:
        """Quantize to the nearest code; rate from code usage (not differentiable)."""
        if self.training and self.relative_threshold:
            self._set_dead_code_threshold(latent.z.shape[0])
        z_q, codes, commit = self.vq(latent.z)
        bits, _ = usage_bits(codes.detach(), self.codebook_size)
        return BottleneckOutput(
            z=z_q,
            rate_bits=bits,
            rate_loss=bits.new_zeros(()),
            aux_loss=commit.sum(),
            codes=codes,
        )


class UsageCoder:
    """Codes VQ indices [N, 1] under a usage table: ``counts`` of each code (how often training
    assigned it), floored so that every code is codable. A part for ``entropy.code_jointly``;
    the table is the model's (it travels in the checkpoint), not the coded batch's."""

    training = False

    def __init__(self, counts: torch.Tensor) -> None:
        c = counts.detach().double().flatten().clamp_min(0).cpu().numpy()
        k = len(c)
        p = c / c.sum() if c.sum() > 0 else np.full(k, 1.0 / k)
        p = np.maximum(p, USAGE_FLOOR / k)
        self.pmf = p / p.sum()
        self.model = categorical(self.pmf)

    def train(self, mode: bool = True) -> UsageCoder:
        return self  # nothing to switch: the table is fixed

    def estimate_bits(self, codes: torch.Tensor) -> float:
        return float(-np.log2(self.pmf[codes.flatten().cpu().numpy()]).sum())

    def quantize(self, codes: torch.Tensor) -> torch.Tensor:
        return codes

    def encode(self, encoder: RangeEncoder, codes: torch.Tensor) -> None:
        encoder.encode(codes.flatten().cpu().numpy().astype(np.int32), self.model)

    def decode(self, decoder: RangeDecoder, num_states: int) -> torch.Tensor:
        return torch.from_numpy(decoder.decode(self.model, num_states).astype(np.int64))[:, None]
