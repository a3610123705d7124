"""MLP encoder and decoder; their sizes come from the fitted schema."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from meaning_transform.models.bottlenecks.base import Latent


def _mlp(dims: Sequence[int], activation: str, batch_norm: bool, dropout: float) -> nn.Sequential:
    """Linear -> [BatchNorm] -> activation -> [Dropout] for each consecutive pair of ``dims``."""
    try:
        act = getattr(nn, activation)
    except AttributeError:
        raise ValueError(
            f"model.activation={activation!r} is not a torch.nn activation (e.g. ReLU, GELU, SiLU)"
        ) from None
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layers.append(nn.Linear(d_in, d_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(act())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Encoder input -> latent distribution (mu, log_var) or a point latent."""

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        hidden_dims: Sequence[int],
        activation: str = "ReLU",
        batch_norm: bool = True,
        dropout: float = 0.0,
        variational: bool = True,
    ) -> None:
        super().__init__()
        self.variational = variational
        self.body = _mlp([input_dim, *hidden_dims], activation, batch_norm, dropout)
        last = hidden_dims[-1] if hidden_dims else input_dim
        self.mu = nn.Linear(last, latent_dim)
        self.log_var = nn.Linear(last, latent_dim) if variational else None

    def forward(self, x: torch.Tensor) -> Latent:
        """Encode; in training a variational encoder samples ``z`` by reparameterization."""
        h = self.body(x)
        mu = self.mu(h)
        if self.log_var is None:
            return Latent(z=mu, mu=mu)
        log_var = self.log_var(h).clamp(-20.0, 10.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var) if self.training else mu
        return Latent(z=z, mu=mu, log_var=log_var)


class MLPDecoder(nn.Module):
    """Latent -> decoder heads (one column per continuous/binary feature, logits per category)."""

    def __init__(
        self,
        latent_dim: int,
        output_dim: int,
        hidden_dims: Sequence[int],
        activation: str = "ReLU",
        batch_norm: bool = True,
        dropout: float = 0.0,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        hidden = list(reversed(hidden_dims))
        self.body = _mlp([latent_dim, *hidden], activation, batch_norm, dropout)
        self.out = nn.Linear(hidden[-1] if hidden else latent_dim, output_dim)
        if zero_init:  # a correction added to other heads: start by changing nothing
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latents to head outputs."""
        return self.out(self.body(z))


class MLPCodec(nn.Module):
    """The encoder/decoder pair configured by ``conf/model/mlp.yaml``.

    ``grid_dim`` > 0 (the model has a grid path): the decoder also reads the grid-decoded state
    (``grid_dim`` columns after the latent) and its output is a correction to the grid's own
    heads, zero at initialization. ``context`` (``model.context=previous``): encoder and decoder
    also read the agent's previous state (``context_dim`` columns, data/context.py), the decoder
    right after the latent.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        latent_dim: int = 32,
        hidden_dims: Sequence[int] = (256, 128, 64),
        activation: str = "ReLU",
        batch_norm: bool = True,
        dropout: float = 0.0,
        variational: bool = True,
        grid_dim: int = 0,
        context: str | None = None,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        if (context is None) != (context_dim == 0):
            raise ValueError(f"model.context={context!r} needs its context_dim (got {context_dim})")
        if latent_dim <= 0:
            raise ValueError(f"model.latent_dim must be > 0, got {latent_dim}")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        if any(h <= 0 for h in hidden_dims):
            raise ValueError(f"model.hidden_dims must all be > 0, got {list(hidden_dims)}")
        self.latent_dim = latent_dim
        self.variational = variational
        encoder_dim = input_dim + context_dim
        self.encoder = MLPEncoder(
            encoder_dim, latent_dim, hidden_dims, activation, batch_norm, dropout, variational
        )
        self.decoder = MLPDecoder(
            latent_dim + context_dim + grid_dim,
            output_dim,
            hidden_dims,
            activation,
            batch_norm,
            dropout,
            zero_init=grid_dim > 0,
        )
