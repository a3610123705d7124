"""Lossless coding of the meaning grid given a learned latent (``compression=lossless``).

Every feature is snapped to :class:`~meaning_transform.grid.MeaningGrid` at k = 1 (continuous
values within tolerance, predicates kept, binary/categorical exact), so the decoded state has
drift 0 by construction and the only question left is how few bits the grid state takes. The
model codes it losslessly, as L3C does for pixels (Mentzer et al. 2019; Bai et al. 2021 for
l-inf near-lossless coding):

- an encoder maps the (grid) state, and its context, to a latent z, coded first under the
  entropy bottleneck's learned factorized prior (``compression``'s EntropyBottleneck);
- a decoder maps z (and the context) to one categorical distribution per feature over its grid
  symbols, and the symbols are coded under it.

The rate is ``bits(z) + bits(x_grid | z)``, real bits per state, and training minimizes exactly
that. Per feature, with ``s`` the grid symbol:

- **absolute head** (no context, or an agent's first state): a softmax over the bins of the
  training mean -+ ``span_std`` std (binary/categorical: the vocabulary) plus an escape bin for
  continuous features; values outside are the escape symbol followed by their distance
  (``coding.encode_escapes``, every bit counted). The continuous bins' logits are a combination
  of the first ``basis`` cosines over the bins (a DCT-smoothed softmax): a free logit per bin
  learns the training agents' exact positions and prices a held-out agent's unseen position at
  the floor, where a smooth curve prices it like its neighbours.
- **delta head** (``context=previous|history``, the agent has a previous state ``p``): a softmax
  over ``s - p`` in ``-delta_window..delta_window`` plus escape (binary/categorical:
  ``(s - p) mod V``), as the classical per-agent delta code, but conditioned on z and on the
  previous state.

The context is the previous state's grid symbols (what the decoder has already decoded) and a
flag saying whether there is one; ``history`` adds, per feature, for how many states that symbol
has not changed (capped at RUN_CAP, see data/context.py) and the symbol's parity (cells round
half to even, so on a lattice even and odd cells differ in length).

Files are not coded with these float32 probabilities (other kernels and machines compute other
floats) but with the integer coding model exported from this one (``integer_model.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from meaning_transform.data.context import check_context
from meaning_transform.grid import MeaningGrid
from meaning_transform.models.bottlenecks.base import Bottleneck, BottleneckOutput, Latent
from meaning_transform.models.bottlenecks.coding import escape_bits
from meaning_transform.models.grid_path import _SkipLayout
from meaning_transform.models.mlp import _mlp
from meaning_transform.schema import FeatureSchema
from meaning_transform.schema.layout import SchemaLayout

LN2 = math.log(2.0)
#: every bin's probability is at least this (the rest is scaled down to make room): the ANS
#: coder's tables (24-bit) can represent it, so coded bytes match the model's estimate, and a
#: value the training agents never held costs at most 22 bits instead of anything (the integer
#: coding model, integer_model.py, gives every bin at least this many 2**-24 units)
FLOOR = 2.0**-22
#: ``history`` context: counts of unchanged states are capped here (and scaled to 0..1)
RUN_CAP = 32


@dataclass(frozen=True)
class HeadLayout:
    """One head's bins per feature: ``lo`` (lowest symbol or delta), ``n`` in-range bins and
    whether the feature has an escape bin (at index ``n``); ``size = n + escape``."""

    lo: np.ndarray  # [F] int64
    n: np.ndarray  # [F] int64
    escape: np.ndarray  # [F] bool
    modulo: np.ndarray  # [F] int64: vocabulary size for (s - p) mod V, 0 otherwise

    @property
    def size(self) -> np.ndarray:
        """Row length of each feature's distribution."""
        return self.n + self.escape

    def index(self, value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Values [B, F] (symbols or deltas) -> (bin index with escapes at n, escaped mask,
        index relative to the range, for the escape payload)."""
        value = np.where(self.modulo > 0, np.mod(value, np.maximum(self.modulo, 1)), value)
        rel = value - self.lo
        escaped = (rel < 0) | (rel >= self.n)
        return np.where(escaped, self.n, rel), escaped, rel

    def value(self, index: np.ndarray, rel: np.ndarray | None = None) -> np.ndarray:
        """Inverse of ``index`` for non-escaped bins (``rel``: decoded escape payloads)."""
        return (index if rel is None else rel) + self.lo


def absolute_layout(grid: MeaningGrid, span_std: float, max_bins: int) -> HeadLayout:
    """Bins of each feature's symbols: the grid symbols of the training mean -+ span_std std
    (at most ``max_bins``), the vocabulary for binary/categorical features."""
    schema = grid.schema
    f = len(schema.features)
    continuous = np.array([feat.kind == "continuous" for feat in schema.features])
    ends = np.where(continuous, 1.0, 0.0)[None, :] * np.array([[-span_std], [span_std]])
    sym = grid.encode(torch.from_numpy(ends.astype(np.float32)))
    vocab = np.array(grid.vocab_sizes(), dtype=np.int64)
    lo = np.where(continuous, sym[0], 0)
    hi = np.where(continuous, sym[1], vocab - 1)
    middle = (lo + hi) // 2
    lo = np.maximum(lo, middle - max_bins // 2)
    hi = np.minimum(hi, lo + max_bins - 1)
    return HeadLayout(lo, hi - lo + 1, continuous.copy(), np.zeros(f, dtype=np.int64))


def delta_layout(grid: MeaningGrid, window: int) -> HeadLayout:
    """Bins of each feature's change: ``-window..window`` plus escape, or mod V for discrete."""
    vocab = np.array(grid.vocab_sizes(), dtype=np.int64)
    continuous = vocab == 0
    lo = np.where(continuous, -window, 0)
    n = np.where(continuous, 2 * window + 1, vocab)
    return HeadLayout(lo, n, continuous.copy(), np.where(continuous, 0, vocab))


def _cosine_basis(n: int, m: int) -> torch.Tensor:
    """[m, n]: the first m DCT-II cosines over n bins (m == n: the identity, free logits)."""
    if m >= n:
        return torch.eye(n)
    k = torch.arange(m, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    return torch.cos(math.pi * k * (i + 0.5) / n).float()


class _Head(nn.Module):
    """Hidden state -> padded per-feature logits [B, F, max size] of one HeadLayout."""

    def __init__(self, hidden: int, layout: HeadLayout, basis: int | None) -> None:
        super().__init__()
        blocks, cols = [], []
        start = 0  # column of each bin in the flat logits
        flat_index = []
        for n, esc in zip(layout.n.tolist(), layout.escape.tolist(), strict=True):
            m = n if basis is None or not esc else min(n, basis)  # discrete: free logits
            blocks.append(_cosine_basis(n, m))
            cols.append(m)
            flat_index.append(list(range(start, start + n)))
            start += n
        n_bins = start
        n_esc = int(layout.escape.sum())
        esc_cols = iter(range(n_bins, n_bins + n_esc))
        pad = n_bins + n_esc  # a column of -inf
        width = int(layout.size.max())
        index = torch.full((len(blocks), width), pad, dtype=torch.long)
        for f, bins in enumerate(flat_index):
            row = bins + ([next(esc_cols)] if layout.escape[f] else [])
            index[f, : len(row)] = torch.tensor(row)
        self.coef = nn.Linear(hidden, sum(cols) + n_esc)
        self.coefs = cols  # per feature: its coefficients (its bins' count: free logits)
        self.n_coef = sum(cols)
        self.register_buffer("basis", torch.block_diag(*blocks), persistent=False)
        self.register_buffer("index", index, persistent=False)
        sizes = torch.tensor(layout.size.tolist(), dtype=torch.float32)
        self.register_buffer("scale", torch.log1p(-sizes * FLOOR)[:, None], persistent=False)
        self.register_buffer(
            "valid", torch.arange(width)[None, :] < sizes[:, None], persistent=False
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [B, F, width], each at least log FLOOR (-inf past the sizes)."""
        out = self.coef(h)
        bins = out[:, : self.n_coef] @ self.basis
        pad = out.new_full((out.shape[0], 1), -math.inf)
        flat = torch.cat([bins, out[:, self.n_coef :], pad], dim=1)
        logp = torch.log_softmax(flat[:, self.index], dim=-1)
        floored = torch.logaddexp(logp + self.scale, logp.new_tensor(math.log(FLOOR)))
        return torch.where(self.valid, floored, -math.inf)


class LosslessCodec(nn.Module):
    """Encoder, latent decoder and per-feature categorical heads (see the module docstring).

    Built by MeaningModule like any codec (``conf/compression/lossless.yaml`` selects it); it
    needs the fitted schema (``needs_schema``) and computes heads, latent and rate itself
    (``code_state``), so the grid path must be off.
    """

    needs_schema = True

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        schema: FeatureSchema,
        latent_dim: int = 8,
        hidden_dims: Sequence[int] = (64,),
        activation: str = "ReLU",
        batch_norm: bool = False,
        dropout: float = 0.0,
        variational: bool = False,
        grid_dim: int = 0,
        context: str | None = None,
        context_dim: int = 0,
        basis: int = 32,
        span_std: float = 4.0,
        max_bins: int = 1024,
        delta_window: int = 6,
    ) -> None:
        super().__init__()
        if grid_dim:
            raise ValueError(
                "compression=lossless codes the meaning grid itself: set "
                "model.grid_path.enabled=false"
            )
        if variational:
            raise ValueError("compression=lossless needs a point latent: model.variational=false")
        if latent_dim <= 0 or not hidden_dims or any(h <= 0 for h in hidden_dims):
            raise ValueError("model.latent_dim and model.hidden_dims must be > 0 (and non-empty)")
        if basis < 1 or delta_window < 1 or max_bins < 2 or not span_std > 0:
            raise ValueError(
                "model.basis, model.delta_window must be >= 1, model.max_bins >= 2, "
                "model.span_std > 0"
            )
        self.context = check_context(context)
        self.schema = schema
        self.schema_layout = SchemaLayout(schema)
        self.grid = MeaningGrid(schema, 1)
        self.num_features = len(schema.features)
        self.latent_dim = latent_dim
        history = 2 * self.num_features if self.context == "history" else 0
        ctx = input_dim + 1 + history if self.context else 0
        self.encoder_body = _mlp([input_dim + ctx, *hidden_dims], activation, batch_norm, dropout)
        self.encoder_out = nn.Linear(hidden_dims[-1], latent_dim)
        hidden = list(reversed(hidden_dims))
        self.decoder_body = _mlp([latent_dim + ctx, *hidden], activation, batch_norm, dropout)
        self.absolute = absolute_layout(self.grid, span_std, max_bins)
        self.absolute_head = _Head(hidden[-1], self.absolute, basis)
        self.delta: HeadLayout | None = None
        self.delta_head: _Head | None = None
        if self.context:
            self.delta = delta_layout(self.grid, delta_window)
            self.delta_head = _Head(hidden[-1], self.delta, None)
        self.skip = _SkipLayout(schema)

    # ------------------------------------------------------------------ pieces (codec API)
    def symbols(self, x: torch.Tensor) -> np.ndarray:
        """Data tensor [B, F] -> grid symbols [B, F] (int64)."""
        return self.grid.encode(x)

    def state_input(self, symbols: np.ndarray) -> torch.Tensor:
        """Grid symbols -> the network's view of that state (model-input layout)."""
        return self.schema_layout.model_input(self.grid.decode(symbols))

    def context_input(
        self, prev: np.ndarray, flag: np.ndarray, runs: np.ndarray | None = None
    ) -> torch.Tensor | None:
        """Previous symbols [B, F], flags [B] (and, for ``history``, each feature's
        ``steps_unchanged`` [B, F]) -> context input (None without context)."""
        if not self.context:
            return None
        f = torch.from_numpy(flag.astype(np.float32))[:, None]
        parts = [self.state_input(prev) * f, f]
        if self.context == "history":
            assert runs is not None
            capped = np.minimum(runs, RUN_CAP).astype(np.float32) / RUN_CAP
            # The parity of a cell: grid cells round half to even (np.rint), so with values on
            # a lattice (ages, steps) even and odd cells differ in length by one lattice step.
            parity = (prev & 1).astype(np.float32) * flag[:, None]
            parts += [torch.from_numpy(capped), torch.from_numpy(parity)]
        return torch.cat(parts, dim=1)

    def encode(self, symbols: np.ndarray, ctx: torch.Tensor | None) -> torch.Tensor:
        """Latent (before quantization) of states given as grid symbols."""
        inp = self.state_input(symbols)
        if ctx is not None:
            inp = torch.cat([inp, ctx], dim=1)
        return self.encoder_out(self.encoder_body(inp))

    def log_probs(self, z: torch.Tensor, ctx: torch.Tensor | None, delta: bool) -> torch.Tensor:
        """Log-probabilities [B, F, width] of the absolute (or delta) head given z and context."""
        h = self.decoder_body(z if ctx is None else torch.cat([z, ctx], dim=1))
        head = self.delta_head if delta else self.absolute_head
        assert head is not None
        return head(h)

    def layout(self, delta: bool) -> HeadLayout:
        """The absolute or the delta head's bins."""
        layout = self.delta if delta else self.absolute
        assert layout is not None
        return layout

    def targets(self, symbols: np.ndarray, prev: np.ndarray | None, delta: bool):
        """(bin index, escaped, relative index) of each symbol under the chosen head."""
        value = symbols - prev if delta else symbols
        return self.layout(delta).index(value)

    def nll_bits(
        self,
        logp: torch.Tensor,
        symbols: np.ndarray,
        prev: np.ndarray | None,
        delta: bool,
    ) -> torch.Tensor:
        """Bits [B] of each state's symbols under ``logp``, escape payloads included."""
        layout = self.layout(delta)
        index, escaped, rel = self.targets(symbols, prev, delta)
        picked = logp.gather(2, torch.from_numpy(index)[:, :, None]).squeeze(2)
        bits = -picked.sum(dim=1) / LN2
        if escaped.any():
            extra = np.zeros(escaped.shape)
            for f in np.nonzero(escaped.any(axis=0))[0]:
                rows = escaped[:, f]
                extra[rows, f] = escape_bits(rel[rows, f], int(layout.n[f]))
            bits = bits + torch.from_numpy(extra.sum(axis=1)).to(bits)
        return bits

    # ------------------------------------------------------------------ training
    def code_state(
        self, x: torch.Tensor, bottleneck: Bottleneck, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, Latent, BottleneckOutput]:
        """Data tensor (and context [B, F + 1]) -> (decoder heads of the grid state, latent,
        bottleneck output whose rate is bits(z) + bits(x_grid | z))."""
        if (context is None) != (self.context is None):
            raise ValueError("model.context and the batches' context disagree")
        symbols = self.symbols(x)
        prev = flag = None
        ctx = None
        if context is not None:
            f = self.num_features
            flag = context[:, f].detach().cpu().numpy() > 0.5
            prev = np.where(flag[:, None], self.symbols(context[:, :f]), 0)
            runs = context[:, f + 1 :].detach().cpu().numpy().astype(np.int64)
            ctx = self.context_input(prev, flag, runs if self.context == "history" else None)
        mu = self.encode(symbols, ctx)
        latent = Latent(z=mu, mu=mu)
        out = bottleneck(latent)
        bits = self.nll_bits(self.log_probs(out.z, ctx, False), symbols, None, False)
        if flag is not None and flag.any():
            delta_bits = self.nll_bits(self.log_probs(out.z, ctx, True), symbols, prev, True)
            bits = torch.where(torch.from_numpy(flag).to(bits.device), delta_bits, bits)
        rate = out.rate_bits + bits
        heads = self.skip(self.grid.decode(symbols).to(x))
        return (
            heads,
            latent,
            BottleneckOutput(
                z=out.z,
                rate_bits=rate,
                rate_loss=bottleneck.level * rate.mean(),
                aux_loss=out.aux_loss,
                grid_bits=bits.detach(),
            ),
        )
