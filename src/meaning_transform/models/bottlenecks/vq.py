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


def usage_pmf(counts: torch.Tensor) -> torch.Tensor:
    """The usage table's probabilities (float64): ``counts`` normalized (uniform when all are 0),
    every code floored at ``USAGE_FLOOR`` of a uniform share so that it stays codable."""
    c = counts.detach().double().flatten().clamp_min(0)
    k = c.numel()
    total = c.sum()
    p = c / total if total > 0 else torch.full_like(c, 1.0 / k)
    p = p.clamp_min(USAGE_FLOOR / k)
    return p / p.sum()


def assignment_logits(
    d2: torch.Tensor, pmf: torch.Tensor, temperature: float, scale: torch.Tensor | float
) -> torch.Tensor:
    """ECVQ's code choice as logits [B, K]: ``-d2 / (temperature * scale) + ln pmf``.

    ``d2`` [B, K] are squared distances from latents to codes, ``scale`` their typical nearest
    one (so the temperature does not depend on the latent's scale). The argmax is the code of
    least ``d2 + temperature * scale * ln2 * bits``: a bit of index costs ``temperature * ln2``
    typical quantization errors (entropy-constrained VQ, Chou, Lookabaugh & Gray 1989), so a
    code a little farther but much more popular wins; ``temperature -> 0`` is nearest-code VQ.
    """
    return -d2 / (temperature * scale) + torch.log(pmf.to(d2.dtype))


def soft_index_bits(logits: torch.Tensor, pmf: torch.Tensor) -> torch.Tensor:
    """Per-state bits of the soft assignment ``softmax(logits)`` under the usage table:
    ``-sum_k q_k log2 pmf_k`` (the hard code's ``-log2 pmf`` as the softmax sharpens)."""
    q = torch.softmax(logits, dim=1)
    return -(q * torch.log2(pmf.to(logits.dtype))).sum(dim=1)


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
        usage_weight: float = 0.0,
        usage_temperature: float = 1.0,
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
        if not usage_weight >= 0:
            raise ValueError(f"compression.usage_weight must be >= 0, got {usage_weight}")
        if not usage_temperature > 0:
            raise ValueError(f"compression.usage_temperature must be > 0, got {usage_temperature}")
        self.usage_weight = float(usage_weight)
        self.usage_temperature = float(usage_temperature)
        self.codebook_size = max(2, round(num_embeddings / self.level))
        self.dead_code_fraction = float(dead_code_fraction)
        self.relative_threshold = threshold_ema_dead_code is None and dead_code_fraction > 0
        # Relative mode: any positive value switches the library's expiry on; the real threshold
        # is set from each batch in forward.
        absolute = 1.0 if self.relative_threshold else float(threshold_ema_dead_code or 0.0)
        # imported here: metrics.py needs this module's entropy_bits, not the VQ library (0.2 s)
        from vector_quantize_pytorch import VectorQuantize

        self.commitment_cost = float(commitment_cost)
        # With the rate term, codes live in latent_dim + 1 dimensions: latents get a 0 there and
        # each code sqrt(its price), so the library's nearest code is ECVQ's (see _price_codes).
        self.priced = self.usage_weight > 0
        self.vq = VectorQuantize(
            dim=latent_dim + int(self.priced),
            codebook_size=self.codebook_size,
            decay=decay,
            commitment_weight=0.0,  # paid here, on the latent's own dimensions
            kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=absolute,
        )
        #: EMA of the batches' mean squared distance to the nearest code (the price's unit)
        self.register_buffer("distance_scale", torch.ones(()))

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

    def _price_codes(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Set each code's extra coordinate to ``sqrt(-temperature * scale * ln pmf)`` and return
        the assignment logits of ``z`` [B, D] and the usage table: with ``z``'s extra coordinate 0, the squared
        distance the library minimizes is ``d2 - temperature * scale * ln pmf``, ECVQ's cost
        (``assignment_logits``). ``scale``: the batch's in training (and into the EMA), the EMA
        in evaluation, so that coding a split does not depend on how it is batched."""
        codebook = self.vq._codebook
        pmf = usage_pmf(codebook.cluster_size).to(z.dtype)
        d2 = torch.cdist(z, codebook.embed[0, :, :-1].detach().clone()).pow(2)
        scale = self.distance_scale
        if self.training:
            scale = d2.detach().min(dim=1).values.mean().clamp_min(1e-12)
            self.distance_scale.lerp_(scale, 1.0 - codebook.decay)
        with torch.no_grad():
            price = -self.usage_temperature * scale * torch.log(pmf)
            codebook.embed[0, :, -1] = price.clamp_min(0).sqrt()
        return assignment_logits(d2, pmf, self.usage_temperature, scale), pmf

    def forward(self, latent: Latent) -> BottleneckOutput:
        """Quantize (nearest code, or ECVQ's with the rate term); rate from code usage
        (measured), rate loss: ``level * usage_weight`` x the soft assignment's bits under the
        usage table that codes the indices (``soft_index_bits``), 0 without the term."""
        z = latent.z
        if self.training and self.relative_threshold:
            self._set_dead_code_threshold(z.shape[0])
        rate_loss = z.new_zeros(())
        if self.priced:
            logits, pmf = self._price_codes(z)
            rate_loss = self.level * self.usage_weight * soft_index_bits(logits, pmf).mean()
            z_q, codes, _ = self.vq(torch.cat([z, z.new_zeros(z.shape[0], 1)], dim=1))
            z_q = z_q[:, :-1]
        else:
            z_q, codes, _ = self.vq(z)
        commit = self.commitment_cost * torch.nn.functional.mse_loss(z, z_q.detach())
        bits, _ = usage_bits(codes.detach(), self.codebook_size)
        return BottleneckOutput(
            z=z_q,
            rate_bits=bits,
            rate_loss=rate_loss,
            aux_loss=commit,
            codes=codes,
        )


class UsageCoder:
    """Codes VQ indices [N, 1] under a usage table: ``counts`` of each code (how often training
    assigned it), floored so that every code is codable. A part for ``entropy.code_jointly``;
    the table is the model's (it travels in the checkpoint), not the coded batch's."""

    training = False

    def __init__(self, counts: torch.Tensor) -> None:
        self.pmf = usage_pmf(counts.cpu()).numpy()
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
