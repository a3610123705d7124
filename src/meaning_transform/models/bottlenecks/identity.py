"""``compression=none``: a plain VAE, whose rate is the KL divergence to the prior in bits."""

from __future__ import annotations

import math

import torch

from meaning_transform.models.bottlenecks.base import Bottleneck, BottleneckOutput, Latent


def kl_nats(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(log_var)) || N(0, I)) per state, in nats, shape [B]."""
    return 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=1)


class IdentityBottleneck(Bottleneck):
    """No quantization: the decoder sees the (sampled) latent.

    Rate: KL(q(z|x) || N(0, I)) / ln 2 bits per state -- the cost of communicating a sample of
    q(z|x) with bits-back coding. That KL is already the loss's ``kl`` term, so it is not charged
    twice: ``level`` multiplies the KL term instead (a beta-VAE with beta = kl_weight * level,
    annealed by ``loss.kl_schedule``). Needs ``model.variational=true``.
    """

    kind = "none"

    def forward(self, latent: Latent) -> BottleneckOutput:
        """Pass the latent through; measure KL in bits."""
        if latent.log_var is None:
            raise ValueError(
                "compression=none measures rate as KL(q(z|x)||p(z)), which needs "
                "model.variational=true (got a point latent)"
            )
        bits = kl_nats(latent.mu, latent.log_var) / math.log(2.0)
        zero = bits.new_zeros(())
        return BottleneckOutput(
            z=latent.z, rate_bits=bits, rate_loss=zero, aux_loss=zero, kl_scale=self.level
        )
