"""The grid path: the classical meaning-grid quantizer inside the model, as its starting point.

One channel per feature of the data tensor, coded directly, in two parts:

- **smooth** channels -- continuous features that no predicate reads: ``d = (value - center) /
  step`` in native units, rounded to an integer (a grid cell) and decoded as ``center + step *
  round(d)``. ``step`` starts at ``2 * init_k * tolerance`` (at ``init_k = 1`` every value
  decodes within its tolerance, as the classical quantizer's) and is learned when
  ``learn_step``: the rate term pays for fine grids, ``losses.GridStepLoss`` for coarse ones.
  ``center`` is the multiple of the initial step nearest the training mean (the classical
  grid's cells, with small integers to code). Coded under a learned smooth factorized density
  (:class:`EntropyBottleneck`), which generalizes to values the training agents never held: on
  a real run's held-out agents it spent 1-2 bits less per position than order-0 tables fitted
  on the training agents.
- **table** channels -- binary, categorical, and continuous features a predicate reads: the
  symbols of the classical :class:`~meaning_transform.grid.MeaningGrid` at ``init_k`` (cells
  split at each predicate's threshold, so decoding keeps every predicate), coded under learned
  probability tables (:class:`HistogramEntropyModel`: a smooth density spent 1.45 bits on
  ``starvation_counter`` where a table spends 0.52). Their steps are not learned.

Rates are real bits per state, and both parts can be coded with ``constriction``. The decoder
heads start from the grid values (``heads``) and the learned decoder adds a bounded correction,
so an untrained model already keeps the meaning the classical quantizer keeps, and training can
only trade it for bits knowingly (cf. L3C, Mentzer et al. 2019; Bai et al. 2021 for l-inf
near-lossless coding).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from meaning_transform.grid import GridSymbols, MeaningGrid
from meaning_transform.models.bottlenecks.base import BottleneckOutput, Latent
from meaning_transform.models.bottlenecks.coding import CodingReport
from meaning_transform.models.bottlenecks.entropy import EntropyBottleneck
from meaning_transform.models.bottlenecks.histogram import HistogramEntropyModel
from meaning_transform.schema import Feature, FeatureSchema
from meaning_transform.schema.layout import SchemaLayout

#: a table channel's support spans the training mean -+ this many std (continuous features),
#: at most MAX_TABLE symbols
TABLE_SPAN_STD = 8.0
MAX_TABLE = 4096

#: logit margin the skip gives a decoded binary value (sigmoid(5) = 0.993), and the penalty per
#: squared index distance of a categorical's other categories
DISCRETE_GAIN = 10.0


class GridSteps(NamedTuple):
    """The grid steps of one forward, computed once (``GridPath.steps``) and read by its three
    users: the smooth channels, the heads' bounds and ``GridStepLoss``."""

    step: torch.Tensor  # per data column, what ``GridPath.step`` is
    relaxed: torch.Tensor  # per data column, what ``GridPath.relaxed_step`` is


class GridPath(nn.Module):
    """Directly coded per-feature grid channels, and the decoder heads they imply."""

    def __init__(
        self,
        schema: FeatureSchema,
        level: float = 1.0,
        init_k: float = 1.0,
        learn_step: bool = True,
        init_scale: float = 16.0,
        density_lr_scale: float = 10.0,
        prior_mixture: bool = False,
    ) -> None:
        super().__init__()
        self.prior_mixture = bool(prior_mixture)
        if not init_k >= 1:
            raise ValueError(f"model.grid_path.init_k must be >= 1, got {init_k}")
        self.meaning_grid = MeaningGrid(schema, k=init_k)
        layout = SchemaLayout(schema)
        mean, std, tol = layout.mean, layout.std, layout.tolerance
        read = {p.feature for p in schema.predicates}
        continuous = torch.tensor([f.kind == "continuous" for f in schema.features])
        smooth = torch.tensor(
            [f.kind == "continuous" and f.name not in read for f in schema.features]
        )
        step = torch.where(continuous, 2.0 * init_k * tol, 1.0).float()
        # Whole-number features (positions, ages) keep their steps whole (see ``step``).
        whole = torch.tensor([_lattice(schema, f) for f in schema.features])
        lattice = torch.where(smooth & (whole > 0) & (whole <= step), whole, 0.0)
        cont_cols = continuous.nonzero().flatten()
        weights = [f.weight if f.kind == "continuous" else 0.0 for f in schema.features]
        buffers = {
            "mean": mean,
            "std": std,
            "step0": step,
            "center": torch.where(smooth, torch.round(mean / step) * step, 0.0),
            "smooth_mask": smooth,
            "lattice": lattice,
            "safe_lattice": torch.where(lattice > 0, lattice, 1.0),  # no overflow off it
            "on_lattice": (lattice > 0).float(),
            "two_tol": (2.0 * tol).clamp_min(1e-12),
            "cont_cols": cont_cols,
            # what ``heads`` reads, on the continuous columns
            "cont_two_tol": (2.0 * tol).clamp_min(1e-12)[cont_cols],
            "cont_tol_std": (0.5 * tol / std * 2.0)[cont_cols],
            "outside_weights": torch.tensor(weights) / max(schema.total_feature_weight, 1e-12),
            "smooth_cols": smooth.nonzero().flatten(),
            "table_cols": (~smooth).nonzero().flatten(),
        }
        for name in ("mean", "std", "center"):  # what the forward reads, on the smooth columns
            buffers[f"smooth_{name}"] = buffers[name][buffers["smooth_cols"]]
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)
        self.log_step = nn.Parameter(torch.zeros(len(schema.features)), requires_grad=learn_step)
        self.smooth: EntropyBottleneck | None = None
        self.table: HistogramEntropyModel | None = None
        if smooth.any():
            i = self.smooth_cols
            # The coding support starts where the training data is (mean +- 4 std, in cells).
            middle, spread = ((mean - self.center) / step)[i], (4.0 * std / step)[i]
            self.smooth = EntropyBottleneck(
                len(i),
                level,
                init_scale=init_scale,
                density_lr_scale=density_lr_scale,
                round_at_medians=False,
            )
            self.smooth.init_quantiles(middle - spread, middle, middle + spread)
            if prior_mixture:  # tables over the training mean -+ TABLE_SPAN_STD std, in cells
                half = (TABLE_SPAN_STD * std / step)[i].ceil().clamp_max(MAX_TABLE // 2)
                self.smooth.attach_order0(middle.round() - half, int(2 * half.max()) + 1)
        if (~smooth).any():
            lo, hi = self._table_support(continuous)
            self.table = HistogramEntropyModel(lo, hi, level, density_lr_scale=density_lr_scale)
            if prior_mixture:  # over the learned tables' support; binary/categorical: all of it
                cover = torch.where(continuous[self.table_cols], 0, hi - lo + 1)
                self.table.attach_order0(lo, int((hi - lo).max()) + 1, cover)
        self._skip = _SkipLayout(schema)
        # the table channels' symbols and values, in torch (MeaningGrid is the numpy reference)
        self.table_symbols = GridSymbols(self.meaning_grid, self.table_cols)

    def _table_support(self, continuous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lowest and highest symbol of each table channel: the grid symbols of the training
        mean -+ TABLE_SPAN_STD std (the whole vocabulary for binary/categorical)."""
        ends = torch.tensor([[-TABLE_SPAN_STD], [TABLE_SPAN_STD]]).expand(2, len(continuous))
        symbols = torch.from_numpy(self.meaning_grid.encode(torch.where(continuous, ends, 0.0)))
        top = torch.tensor(self.meaning_grid.vocab_sizes()) - 1  # binary 1, categorical V - 1
        lo = torch.where(continuous, symbols[0], 0)
        hi = torch.where(continuous, symbols[1], top)
        # a tolerance tiny against the spread must not make a million-entry table: values past
        # MAX_TABLE symbols are escapes (coded, and counted, by coding.py)
        middle = (lo + hi) // 2
        lo, hi = (
            torch.maximum(lo, middle - MAX_TABLE // 2),
            torch.minimum(hi, middle + MAX_TABLE // 2),
        )
        return lo[self.table_cols], hi[self.table_cols]

    @property
    def relaxed_step(self) -> torch.Tensor:
        """The learned step before whole-number features round it (what GridStepLoss prices)."""
        return self.step0 * self.log_step.exp()

    @property
    def step(self) -> torch.Tensor:
        """Grid step per data column in native units (1 for binary/categorical columns).

        On a whole-number feature the step is a whole number (straight-through): a step of 1.03
        cells on integer positions leaves the error of every 17th one at 0.51 cells, outside
        tolerance, and measured on 8 held-out agents that was 37% of the positions, where
        ``1 - 1/k`` (GridStepLoss) promised 3%. Whole steps lose what that promises.
        """
        return self.steps().step

    def steps(self) -> GridSteps:
        """``step`` and ``relaxed_step`` together (the model computes them once per step)."""
        relaxed = self.relaxed_step
        whole = self.lattice * (relaxed / self.safe_lattice).round().clamp_min(1.0)
        # straight-through where on the lattice (off it, the added term is exactly 0)
        learned = relaxed + ((whole - relaxed) * self.on_lattice).detach()
        return GridSteps(torch.where(self.smooth_mask, learned, self.step0), relaxed)

    def _parts(
        self, x: torch.Tensor, steps: GridSteps | None = None
    ) -> list[tuple[torch.Tensor, EntropyBottleneck, torch.Tensor]]:
        """(data columns, entropy model, channel values) of the smooth and table parts of ``x``."""
        parts = []
        if self.smooth is not None:
            step = (self.steps() if steps is None else steps).step[self.smooth_cols]
            native = x[:, self.smooth_cols] * self.smooth_std + self.smooth_mean
            parts.append((self.smooth_cols, self.smooth, (native - self.smooth_center) / step))
        if self.table is not None:
            symbols = self.table_symbols.encode(x)
            parts.append((self.table_cols, self.table, symbols.to(x)))
        return parts

    def forward(
        self, x: torch.Tensor, steps: GridSteps | None = None
    ) -> tuple[torch.Tensor, BottleneckOutput]:
        """Data tensor -> (grid-decoded data tensor, the channels' bottleneck output);
        ``steps``: this step's ``steps()``, if the caller computed them already."""
        steps = self.steps() if steps is None else steps
        outs = []
        g = torch.empty_like(x)
        for cols, model, d in self._parts(x, steps):
            out = model(Latent(z=d, mu=d))
            if model is self.smooth:
                decoded = self._smooth_values(out.z, steps.step[self.smooth_cols])
            else:
                decoded = self._table_values(out.z)
            g = g.index_copy(1, cols, decoded)
            outs.append(out)
        first, *rest = outs  # every feature is in one of the parts
        # No gradient from the decoded values to the step: judged on the batch, a step of 1.03
        # cells kept every training agent's position within tolerance (a run has ~60, all
        # stationary) and 37% of held-out ones outside. The step learns from the rate and
        # from GridStepLoss (the share a step loses on any data) alone.
        return g.detach(), BottleneckOutput(
            z=g,
            rate_bits=sum((o.rate_bits for o in rest), first.rate_bits),
            rate_loss=sum((o.rate_loss for o in rest), first.rate_loss),
            aux_loss=sum((o.aux_loss for o in rest), first.aux_loss),
        )

    def _smooth_values(self, d_hat: torch.Tensor, smooth_step: torch.Tensor) -> torch.Tensor:
        """Rounded smooth channels -> their data-tensor values (cell centers)."""
        native = d_hat * smooth_step + self.smooth_center
        return (native - self.smooth_mean) / self.smooth_std

    def _table_values(self, symbols: torch.Tensor) -> torch.Tensor:
        """Meaning-grid symbols of the table channels -> their data-tensor values."""
        return self.table_symbols.decode(symbols.detach().round().long()).to(symbols)

    @torch.no_grad()
    def fit_order0(self, train_x: torch.Tensor, val_x: torch.Tensor) -> None:
        """Fit each channel's order-0 table on data tensor ``train_x`` (the training split) and
        choose its mixing weight on ``val_x`` (the validation split); a no-op without
        ``prior_mixture`` (models/bottlenecks/order0.py)."""
        if not self.prior_mixture:  # nothing to fit: not even the channels' values
            return
        for (_, model, train), (_, _, val) in zip(
            self._parts(train_x), self._parts(val_x), strict=True
        ):
            if model.order0 is not None:
                model.fit_order0(train, val)

    def coding_parts(self, x: torch.Tensor) -> list[tuple[EntropyBottleneck, torch.Tensor]]:
        """(entropy model, channel values) of each coded part of data tensor ``x``."""
        return [(model, d) for _, model, d in self._parts(x)]

    def coding_report(self, x: torch.Tensor) -> list[CodingReport]:
        """Really code the grid channels of data tensor ``x``: one CodingReport per part."""
        return [model.coding_report(d) for model, d in self.coding_parts(x)]

    def heads(
        self, g: torch.Tensor, correction: torch.Tensor, steps: GridSteps | None = None
    ) -> torch.Tensor:
        """Decoder heads: those the grid values ``g`` (data tensor) imply, plus the learned
        decoder's bounded ``correction`` [B, head_dim] (``steps``: as in ``forward``).

        Bounds: a continuous value moves at most ``tolerance * |1 - k|`` (k = step / (2 x
        tolerance)): at k <= 1 a value whose cell keeps it within tolerance stays within it; at
        k = 1 nothing moves; past it the value may move within its cell. A binary or
        categorical logit moves by less than ``DISCRETE_GAIN / 2``, which cannot overturn the
        grid's exact value. So the learned part can refine, never lose meaning the grid keeps.
        (Unbounded, it memorized the training agents' positions -- a run has ~60 stationary
        ones -- and put 36% of held-out positions outside tolerance.)
        """
        k = (self.steps() if steps is None else steps).step[self.cont_cols] / self.cont_two_tol
        room = self.cont_tol_std * (1.0 - k).abs()
        bound = self._skip.discrete_bound.expand_as(correction).index_copy(
            1, self._skip.continuous_heads, room.expand(len(correction), -1)
        )
        return self._skip(g) + torch.tanh(correction) * bound

    def expected_outside(self, steps: GridSteps | None = None) -> torch.Tensor:
        """Weighted sum over continuous channels of ``max(0, 1 - 1/k)``, the share of uniformly
        spread values a step of k x (2 x tolerance) puts outside tolerance (see GridStepLoss;
        ``steps``: as in ``forward``)."""
        # The relaxed step: its whole-number rounding has no useful gradient, and pricing the
        # relaxed k with the uniform model keeps a rounded step of 2 from looking free.
        relaxed = steps.relaxed if steps is not None else self.relaxed_step
        k = torch.where(self.smooth_mask, relaxed, self.step0) / self.two_tol
        return (self.outside_weights * (1.0 - 1.0 / k).clamp_min(0.0)).sum()

    def steps_in_tolerances(self, schema: FeatureSchema) -> dict[str, float]:
        """Current grid step of each continuous feature in units of 2 x its tolerance (k)."""
        k = (self.step / self.two_tol).detach()
        return {
            f.name: float(k[i]) for i, f in enumerate(schema.features) if f.kind == "continuous"
        }


def _lattice(schema: FeatureSchema, f: Feature) -> float:
    """1.0 for a continuous feature whose training values are all whole numbers, else 0.0."""
    return schema.normalizers[f.name].lattice if f.kind == "continuous" else 0.0


class _SkipLayout(nn.Module):
    """Maps grid values (data-tensor layout) to decoder-head layout."""

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        slices = schema.head_slices
        cols, heads, gains, offsets, squared = [], [], [], [], []
        for i, f in enumerate(schema.features):
            sl = slices[f.name]
            if f.kind == "continuous":  # the head is the value itself
                cols.append(i), heads.append(sl.start), gains.append(1.0), offsets.append(0.0)
                squared.append(False)
            elif f.kind == "binary":  # logit = gain * (g - 1/2)
                cols.append(i), heads.append(sl.start), gains.append(DISCRETE_GAIN)
                offsets.append(0.5), squared.append(False)
            else:  # logit of category c = -gain * (g - c)^2
                for c in range(sl.stop - sl.start):
                    cols.append(i), heads.append(sl.start + c), gains.append(-DISCRETE_GAIN)
                    offsets.append(float(c)), squared.append(True)
        self.head_dim = schema.head_dim
        starts = [slices[f.name].start for f in schema.features if f.kind == "continuous"]
        self.register_buffer(
            "continuous_heads", torch.tensor(starts, dtype=torch.long), persistent=False
        )
        bound = torch.full((1, self.head_dim), DISCRETE_GAIN / 2 * (1 - 1e-3))
        self.register_buffer("discrete_bound", bound, persistent=False)
        self.register_buffer("cols", torch.tensor(cols, dtype=torch.long), persistent=False)
        self.register_buffer("heads", torch.tensor(heads, dtype=torch.long), persistent=False)
        self.register_buffer("gains", torch.tensor(gains), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets), persistent=False)
        self.register_buffer("squared", torch.tensor(squared), persistent=False)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        """[B, F] grid values -> [B, head_dim] heads."""
        diff = g[:, self.cols] - self.offsets
        vals = self.gains * torch.where(self.squared, diff * diff, diff)
        out = g.new_zeros(g.shape[0], self.head_dim)
        return out.index_copy(1, self.heads, vals)
