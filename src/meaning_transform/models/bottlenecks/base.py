"""The bottleneck interface: every bottleneck turns a latent into what the decoder sees plus its rate.

All bottlenecks report ``rate_bits`` in the same unit, bits per state, so runs with different
bottlenecks can be compared on one axis. ``level`` (``compression.level``, > 0, higher = more
compression) is interpreted by each bottleneck and documented on its class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Latent:
    """Encoder output: ``z`` (a sample in training when variational, else the mean) and its law."""

    z: torch.Tensor
    mu: torch.Tensor
    log_var: torch.Tensor | None = None


@dataclass
class BottleneckOutput:
    """What a bottleneck returns for one batch."""

    z: torch.Tensor  # [B, D] what the decoder sees
    rate_bits: torch.Tensor  # [B] bits per state (measured; differentiable where possible)
    rate_loss: torch.Tensor  # scalar: differentiable rate term, already scaled by ``level``
    aux_loss: torch.Tensor  # scalar: the bottleneck's own training loss (commitment, quantiles)
    codes: torch.Tensor | None = None  # [B] discrete code index per state (vq), for usage stats
    kl_scale: float = 1.0  # multiplies the KL loss term (``none``: its rate *is* the KL)
    grid_bits: torch.Tensor | None = None  # [B] the grid path's share of rate_bits, if any


class Bottleneck(nn.Module):
    """Base class: subclasses implement ``forward(latent) -> BottleneckOutput``."""

    #: short name used in logs and reports
    kind: str = "base"

    def __init__(self, latent_dim: int, level: float = 1.0) -> None:
        super().__init__()
        if latent_dim <= 0:
            raise ValueError(f"latent_dim must be > 0, got {latent_dim}")
        if not level > 0:
            raise ValueError(f"compression.level must be > 0, got {level}")
        self.latent_dim = latent_dim
        self.level = float(level)

    def forward(self, latent: Latent) -> BottleneckOutput:  # pragma: no cover - interface
        """Quantize/pass the latent and measure its rate."""
        raise NotImplementedError
