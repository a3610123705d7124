"""``compression=vq``: vector quantization with an EMA codebook (vector-quantize-pytorch)."""

from __future__ import annotations

import math

import torch
from vector_quantize_pytorch import VectorQuantize

from meaning_transform.models.bottlenecks.base import Bottleneck, BottleneckOutput, Latent


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
    """

    kind = "vq"

    def __init__(
        self,
        latent_dim: int,
        level: float = 1.0,
        num_embeddings: int = 512,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        threshold_ema_dead_code: float = 2.0,
    ) -> None:
        super().__init__(latent_dim, level)
        if num_embeddings < 2:
            raise ValueError(f"compression.num_embeddings must be >= 2, got {num_embeddings}")
        self.codebook_size = max(2, round(num_embeddings / self.level))
        self.vq = VectorQuantize(
            dim=latent_dim,
            codebook_size=self.codebook_size,
            decay=decay,
            commitment_weight=commitment_cost,
            kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=threshold_ema_dead_code,
        )

    @property
    def fixed_rate_bits(self) -> float:
        """Bits per state of a fixed-length code: log2(K)."""
        return math.log2(self.codebook_size)

    def forward(self, latent: Latent) -> BottleneckOutput:
        """Quantize to the nearest code; rate from code usage (not differentiable)."""
        z_q, codes, commit = self.vq(latent.z)
        bits, counts = usage_bits(codes.detach(), self.codebook_size)
        used = (counts > 0).sum().to(torch.float32)
        return BottleneckOutput(
            z=z_q,
            rate_bits=bits,
            rate_loss=bits.new_zeros(()),
            aux_loss=commit.sum(),
            codes=codes,
            stats={"codes_used": used, "perplexity": torch.exp2(entropy_bits(counts))},
        )
