"""Entropy bottleneck: scalar quantization with a learned factorized prior (Ballé et al. 2018)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Bottleneck, BottleneckOutput, Latent
from .coding import (
    MISMATCH,
    CodingPart,
    CodingReport,
    CodingTables,
    RangeDecoder,
    RangeEncoder,
    check_codable,
    close_decoder,
    decode_channels,
    encode_channels,
    new_encoder,
    open_decoder,
    to_bytes,
)
from .order0 import OrderZeroMixture


class _LowerBound(torch.autograd.Function):
    """``max(x, bound)`` whose gradient still flows where it would push ``x`` up past the bound."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # A plain clamp would freeze a likelihood stuck under the bound forever.
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes, None


class _CDFNetwork(torch.autograd.Function):
    """The per-channel CDF networks (``EntropyBottleneck._logits_cumulative``) as one autograd
    node with a hand-written backward.

    ``params`` are the raw parameters, layer by layer: matrix, bias, factor (no factor on the
    last layer), all stored divided by ``k`` (``density_lr_scale``). Layer ``i`` computes
    ``a = k * bias + softplus(k * matrix) @ h``, then ``h = a + tanh(k * factor) * tanh(a)``
    on all but the last. Recorded op by op, autograd builds ~25 nodes per call; here the forward
    records nothing and the backward is ~12 ops per gated layer: 40 ops fewer per training step
    (two networks), and forward + backward of both ~14% faster at batch 64 (the step is dispatch
    bound, see docs/benchmarks.md). ``tests/test_entropy_bottleneck.py`` gradchecks it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: float, *params: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        n = (len(params) + 1) // 3
        h, saved = x, []
        for i in range(n):
            matrix = F.softplus(params[3 * i], beta=k)  # softplus(k * matrix) / k
            a = torch.baddbmm(params[3 * i + 1], matrix, h, beta=k, alpha=k)
            if i < n - 1:
                gate, t = torch.tanh(params[3 * i + 2] * k), torch.tanh(a)
                saved += [h, matrix, gate, t]
                h = a + gate * t
            else:
                saved += [h, matrix]
                h = a
        ctx.k, ctx.n, ctx.n_params = k, n, len(params)
        ctx.save_for_backward(*params, *saved)
        return h

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        k, n, n_params = ctx.k, ctx.n, ctx.n_params
        tensors = ctx.saved_tensors
        params, saved = tensors[:n_params], list(tensors[n_params:])
        needs = ctx.needs_input_grad[2:]
        grads: list[torch.Tensor | None] = [None] * n_params
        dh = grad
        for i in reversed(range(n)):
            if i < n - 1:
                h, matrix, gate, t = saved[4 * i : 4 * i + 4]
                if needs[3 * i + 2]:
                    dgate = (dh * t).sum(-1, keepdim=True)
                    grads[3 * i + 2] = torch.ops.aten.tanh_backward(dgate, gate) * k
                da = dh + torch.ops.aten.tanh_backward(dh * gate, t)
            else:
                h, matrix = saved[4 * i : 4 * i + 2]
                da = dh
            da = da * k  # d(logits) / d(bias / k, matrix / k, h) all carry k
            if needs[3 * i + 1]:
                grads[3 * i + 1] = da.sum(-1, keepdim=True)
            if needs[3 * i]:
                dm = torch.bmm(da, h.transpose(1, 2))
                grads[3 * i] = torch.ops.aten.softplus_backward(dm, params[3 * i], k, 20.0)
            if i > 0 or ctx.needs_input_grad[0]:
                dh = torch.bmm(matrix.transpose(1, 2), da)
        return (dh if ctx.needs_input_grad[0] else None, None, *grads)


class EntropyBottleneck(Bottleneck):
    """Rounds each latent channel and measures its rate under a learned factorized density.

    Every channel has its own monotone CDF network (positive matrices, biases, tanh-gated
    factors). Training adds U(-0.5, 0.5) noise to measure the rate and hands the decoder
    ``z`` rounded around the channel medians through a straight-through estimator; eval rounds
    for real. ``rate_bits`` is ``-log2`` likelihood summed over channels, in bits per
    state (``round_at_medians=False`` rounds to the integers themselves: the grid path's channels,
    whose integers are grid cells). ``level`` (``compression.level``) only scales the rate term:
    ``rate_loss = level * rate_bits.mean()``, so a higher level trades distortion for fewer
    bits. ``aux_loss`` trains the quantiles (the support used for real coding) and moves
    nothing else, so it can be added to the main loss.

    ``density_lr_scale``: the CDF networks' parameters are stored divided by this factor and
    multiplied back in use, so under Adam (whose steps are scale-free) they learn that many times
    faster than the encoder and decoder, without a separate optimizer group. The density must
    shrink from its initial width to the latents' before the measured bits mean anything; at the
    shared learning rate that takes thousands of steps, longer than a short run.
    """

    kind = "entropy"

    def __init__(
        self,
        latent_dim: int,
        level: float = 1.0,
        filters: tuple[int, ...] | None = (3, 3, 3),
        init_scale: float = 10.0,
        likelihood_bound: float = 1e-9,
        tail_mass: float = 1e-9,
        density_lr_scale: float = 1.0,
        round_at_medians: bool = True,
    ) -> None:
        super().__init__(latent_dim, level)
        self.round_at_medians = bool(round_at_medians)
        if not 0 < tail_mass < 1:
            raise ValueError(f"tail_mass must be in (0, 1), got {tail_mass}")
        if not density_lr_scale > 0:
            raise ValueError(f"density_lr_scale must be > 0, got {density_lr_scale}")
        self.density_lr_scale = float(density_lr_scale)
        k = self.density_lr_scale
        self.likelihood_bound = float(likelihood_bound)
        self.tail_mass = float(tail_mass)
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        # filters=None: no CDF network (a subclass brings its own density)
        widths = (1, *filters, 1) if filters is not None else (1,)
        scale = init_scale ** (1.0 / max(len(widths) - 1, 1))
        for i in range(len(widths) - 1):
            # Each layer starts shrinking by ``scale``, so the composed CDF spans ~init_scale.
            init = math.log(math.expm1(1.0 / scale / widths[i + 1]))
            self.matrices.append(
                nn.Parameter(torch.full((latent_dim, widths[i + 1], widths[i]), init / k))
            )
            self.biases.append(nn.Parameter((torch.rand(latent_dim, widths[i + 1], 1) - 0.5) / k))
            if i < len(widths) - 2:
                self.factors.append(nn.Parameter(torch.zeros(latent_dim, widths[i + 1], 1)))

        quantiles = torch.tensor([-init_scale, 0.0, init_scale]).repeat(latent_dim, 1, 1)
        self.quantiles = nn.Parameter(quantiles)  # [D, 1, 3]
        t = math.log(2.0 / tail_mass - 1.0)
        self.register_buffer("quantile_targets", torch.tensor([-t, 0.0, t]), persistent=False)
        self.order0: OrderZeroMixture | None = None

    def attach_order0(
        self, lo: torch.Tensor, width: int, cover: torch.Tensor | None = None
    ) -> None:
        """Give every channel an order-0 table over the integer offsets ``lo .. lo + width - 1``
        (``fit_order0`` fills it; ``cover``: see ``OrderZeroMixture``), mixed into this prior
        when evaluating and coding."""
        self.order0 = OrderZeroMixture(lo, width, cover).to(self.quantiles.device)

    @torch.no_grad()
    def fit_order0(self, train: torch.Tensor, val: torch.Tensor) -> None:
        """Fit the order-0 tables on values ``train`` [N, D] and choose each channel's weight
        on values ``val`` [M, D] (quantized as the eval forward quantizes them)."""
        if self.order0 is None:
            raise ValueError("no order-0 tables to fit: attach_order0 first")
        self.order0.fit_tables(self._offsets(train))
        y = self.quantize(val)
        learned = self._likelihood_and_quantile_loss(y)[0]
        self.order0.choose_weights(learned, self._offsets(val), self.likelihood_bound)

    @torch.no_grad()
    def init_quantiles(
        self, lower: torch.Tensor, median: torch.Tensor, upper: torch.Tensor
    ) -> None:
        """Start each channel's coding support at ``[lower, upper]`` around ``median`` ([D] each)."""
        self.quantiles.copy_(torch.stack([lower, median, upper], dim=-1)[:, None, :])

    @property
    def medians(self) -> torch.Tensor:
        """Per-channel median of the learned density, [D] (detached)."""
        return self.quantiles[:, 0, 1].detach()

    def _parameters_by_layer(self) -> list[torch.Tensor]:
        """The CDF network's raw parameters in ``_CDFNetwork``'s order."""
        params = []
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            params += [matrix, bias, *([self.factors[i]] if i < len(self.factors) else [])]
        return params

    def _logits_cumulative(self, x: torch.Tensor, stop_gradient: bool = False) -> torch.Tensor:
        """Logit of the per-channel CDF at ``x`` of shape [D, 1, N] -> [D, 1, N]."""
        params = self._parameters_by_layer()
        if stop_gradient:
            params = [p.detach() for p in params]
        return _CDFNetwork.apply(x, self.density_lr_scale, *params)

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """Probability of the unit bin centred on each ``y`` [B, D] -> [B, D], floored."""
        v = y.t().unsqueeze(1)
        lower, upper = self._logits_cumulative(torch.cat([v - 0.5, v + 0.5], dim=-1)).chunk(2, -1)
        return self._bin_probability(lower, upper)

    def _bin_probability(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """CDF(upper) - CDF(lower) from logits [D, 1, B] -> [B, D], floored."""
        # Subtract sigmoids on the side where they are far from 1, where float32 is precise.
        sign = torch.where(lower + upper > 0, -1.0, 1.0)
        lik = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        lik = _LowerBound.apply(lik, self.likelihood_bound)
        return lik.squeeze(1).t()

    @property
    def centers(self) -> torch.Tensor:
        """Per-channel offset of the rounding grid, [D]: the medians, or 0 (plain integers)."""
        medians = self.medians
        return medians if self.round_at_medians else torch.zeros_like(medians)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Round ``z`` [B, D] to the integer grid offset by ``centers`` (no gradient)."""
        if not self.round_at_medians:  # centers are 0: the same values, two kernels fewer
            return torch.round(z.detach())
        centers = self.centers
        return torch.round(z.detach() - centers) + centers

    def quantile_loss(self) -> torch.Tensor:
        """Pull the quantiles to the CDF's tails and median; moves only ``quantiles``."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.quantile_targets).sum()

    def _likelihood_and_quantile_loss(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``likelihood(y)`` and ``quantile_loss()`` from one pass of the CDF networks."""
        batch = y.shape[0]
        v = y.t().unsqueeze(1)
        q = self.quantiles
        x = torch.cat([v - 0.5, v + 0.5, q, q.detach()], dim=-1)
        lower, upper, at_q, at_fixed_q = self._logits_cumulative(x).split([batch, batch, 3, 3], -1)
        # Equal in value to quantile_loss(); the second term cancels its gradient to the CDF
        # parameters (same inputs, opposite sign), leaving a gradient only to the quantiles.
        # One fused pass is much cheaper per step than a second, detached one.
        loss_q = torch.abs(at_q - self.quantile_targets).sum()
        loss_fixed_q = torch.abs(at_fixed_q - self.quantile_targets).sum()
        aux = loss_q - loss_fixed_q + loss_fixed_q.detach()
        return self._bin_probability(lower, upper), aux

    def training_rate_point(self, z: torch.Tensor) -> torch.Tensor:
        """Where training measures the rate: ``z`` plus U(-0.5, 0.5) noise (Balle et al.)."""
        return z + torch.empty_like(z).uniform_(-0.5, 0.5)

    def forward(self, latent: Latent) -> BottleneckOutput:
        """Quantize ``latent.z`` and measure its rate in bits per state."""
        z = latent.z
        if self.training:
            y = self.training_rate_point(z)
            z_hat = z + (self.quantize(z) - z).detach()
        else:
            y = z_hat = self.quantize(z)
        likelihood, aux_loss = self._likelihood_and_quantile_loss(y)
        if self.order0 is not None and not self.training:  # training prices the learned part
            likelihood = self.order0.mix(likelihood, self._offsets(y))
            likelihood = likelihood.clamp_min(self.likelihood_bound)
        rate_bits = -torch.log2(likelihood).sum(dim=1)
        return BottleneckOutput(
            z=z_hat,
            rate_bits=rate_bits,
            rate_loss=self.level * rate_bits.mean(),
            aux_loss=aux_loss,
        )

    # ------------------------------------------------------------------ real coding
    def __getstate__(self) -> dict:
        """Pickle/deepcopy without the coding tables (constriction models cannot be pickled;
        ``update()`` rebuilds them from the weights)."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in state.items() if k not in ("_coding_tables", "_coding_key")}

    def _table_state(self) -> list[torch.Tensor]:
        """Everything the coding tables are computed from (parameters and buffers)."""
        return [t.detach() for t in (*self.parameters(), *self.buffers())]

    def tables_are_current(self) -> bool:
        """Whether ``update()``'s tables were computed from the current weights."""
        key = getattr(self, "_coding_key", None)
        state = self._table_state()
        return (
            key is not None
            and len(key) == len(state)
            and all(
                a.shape == b.shape and torch.equal(a, b.to(a.device))
                for a, b in zip(key, state, strict=True)
            )
        )

    @torch.no_grad()
    def update(self, force: bool = False) -> bool:
        """Compute and cache the coding tables (per-channel pmf over the support, overflow bin
        last, and their fixed-point ``constriction`` models) unless they are current; returns
        whether they were rebuilt.

        ``compress``/``decompress`` call this, so a table left stale by a training step or
        ``load_state_dict`` is rebuilt before it codes anything (the check compares a snapshot
        of the weights, so it also sees in-place edits); calling it after training, as with
        CompressAI, only moves the cost out of the first ``compress``.
        """
        if not force and self.tables_are_current():
            return False
        self._coding_tables = CodingTables.from_pmfs(*self._pmf_tables())
        self._coding_key = [t.clone().cpu() for t in self._table_state()]
        return True

    def coding_tables(self) -> CodingTables:
        """The current coding tables (``update()`` first if the weights changed)."""
        self.update()
        return self._coding_tables

    def _support(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel lowest and highest integer offset from the center covered by the pmf."""
        q = self.quantiles.detach()[:, 0, :].cpu()
        centers = self.centers.cpu()
        lowest = torch.floor(q[:, 0] - centers).clamp_max(0).long().numpy()
        highest = torch.ceil(q[:, 2] - centers).clamp_min(0).long().numpy()
        if self.order0 is not None:  # cover every value the tables give mass to
            first, last = self.order0.ranges()
            used = first <= last
            lowest = np.where(used, np.minimum(lowest, first), lowest)
            highest = np.where(used, np.maximum(highest, last), highest)
        return lowest, highest

    def _pmf_tables(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """Lowest offset per channel and its pmf over the support with the overflow bin last."""
        lowest, highest = self._support()
        lengths = highest - lowest + 1
        centers = self.centers
        grid = torch.arange(int(lengths.max()))[:, None] + torch.from_numpy(lowest)[None, :]
        # Same float arithmetic as ``quantize`` so the pmf is evaluated at the very values coded.
        probs = self.likelihood(grid.to(centers) + centers).double().cpu().numpy()  # [L, D]
        edges = torch.from_numpy(np.stack([lowest - 0.5, highest + 0.5], axis=1)).to(centers)
        logits = self._logits_cumulative((edges + centers[:, None])[:, None, :])[:, 0, :]
        tails = (torch.sigmoid(logits[:, 0]) + torch.sigmoid(-logits[:, 1])).double().cpu()
        if self.order0 is not None:  # the mixture, its tables' escape mass in the overflow bin
            w = self.order0.weight.cpu()
            probs = self.order0.mix(torch.from_numpy(probs), grid.cpu()).numpy()
            tails = w * tails + (1 - w) * self.order0.escape_mass().cpu()
        pmfs = [np.append(probs[: lengths[c], c], float(tails[c])) for c in range(len(lowest))]
        return lowest, pmfs

    def _offsets(self, z: torch.Tensor) -> torch.Tensor:
        """Integer offsets from the grid centers as a tensor, [N, D], as ``quantize`` rounds."""
        return torch.round(z.detach() - self.centers)

    def offsets(self, z: torch.Tensor) -> np.ndarray:
        """Integer offsets from the grid centers, [N, D], exactly as ``quantize`` rounds."""
        offsets = self._offsets(z).double().cpu().numpy()
        check_codable(offsets)
        return offsets.astype(np.int64)

    def encode(self, encoder: RangeEncoder, z: torch.Tensor) -> None:
        """Write ``z`` [N, D], quantized like the eval forward, to ``encoder`` (``compress``'s
        building block: several models can share one stream, see ``code_jointly``)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"expected [N, {self.latent_dim}] values to code, got {list(z.shape)}")
        encode_channels(encoder, self.offsets(z), self.coding_tables())

    def decode(self, decoder: RangeDecoder, num_states: int) -> torch.Tensor:
        """Read the [num_states, D] quantized values ``encode`` wrote."""
        offsets = decode_channels(decoder, num_states, self.coding_tables())
        centers = self.centers
        return torch.from_numpy(offsets).to(centers) + centers

    @torch.no_grad()
    def compress(self, z: torch.Tensor) -> bytes:
        """Quantize ``z`` [N, D] like the eval forward and range-code it: one stream of bytes."""
        encoder = new_encoder()
        self.encode(encoder, z)
        return to_bytes(encoder)

    @torch.no_grad()
    def decompress(self, data: bytes, shape: tuple[int, int]) -> torch.Tensor:
        """Decode ``compress``'s bytes back to the quantized latents of ``shape`` [N, D]."""
        num_states, latent_dim = shape
        if latent_dim != self.latent_dim:
            raise ValueError(
                f"data has latent_dim {latent_dim} but the model has {self.latent_dim}"
            )
        decoder = open_decoder(data)
        try:
            z = self.decode(decoder, num_states)
        except AssertionError as e:  # constriction: data its model could not have written
            raise ValueError(MISMATCH) from e
        close_decoder(decoder)
        return z

    def estimate_bits(self, z: torch.Tensor) -> float:
        """The eval forward's bits for ``z`` [N, D] (its likelihood of the rounded values)."""
        return self(Latent(z=z, mu=z)).rate_bits.sum().item()

    def coding_report(self, z: torch.Tensor) -> CodingReport:
        """Code ``z`` [N, D] for real: estimated (eval forward) vs coded bits, exact round trip."""
        return code_jointly([(self, z)])


@torch.no_grad()
def code_jointly(parts: Sequence[tuple[CodingPart, torch.Tensor]]) -> CodingReport:
    """Code every (model, values [N, D_i]) part into one range-coded stream and decode it back.

    One stream, so the stream's fixed cost (its end, ~16 bits, see coding.py) is paid once per
    batch rather than once per part. A part is any model with ``estimate_bits``, ``quantize``,
    ``encode`` and ``decode`` (an entropy bottleneck, a grid channel, ``vq.UsageCoder``). The
    estimate is each model's eval-forward ``rate_bits`` (its likelihood of the rounded values); the coder's tables
    come from the same likelihood, so the two differ only by the overflow bin, the 24-bit
    fixed-point tables and that fixed cost (``benchmarks/coding_overhead.py`` breaks it down).
    """
    sizes = {z.shape[0] for _, z in parts}
    if len(sizes) > 1:
        raise ValueError(f"every part must hold the same states, got batch sizes {sorted(sizes)}")
    modes = [model.training for model, _ in parts]
    for model, _ in parts:
        model.train(False)
    try:
        estimated = sum(model.estimate_bits(z) for model, z in parts)
        expected = [model.quantize(z) for model, z in parts]
        encoder = new_encoder()
        for model, z in parts:
            model.encode(encoder, z)
        data = to_bytes(encoder)
        decoder = open_decoder(data)
        decoded = [model.decode(decoder, z.shape[0]) for model, z in parts]
        close_decoder(decoder)
    finally:
        for (model, _), mode in zip(parts, modes, strict=True):
            model.train(mode)
    num_states = parts[0][1].shape[0] if parts else 0
    return CodingReport(
        num_states=num_states,
        estimated_bits_per_state=estimated / max(num_states, 1),
        coded_bits_per_state=8 * len(data) / max(num_states, 1),
        num_bytes=len(data),
        exact=all(torch.equal(a, b) for a, b in zip(decoded, expected, strict=True)),
    )
