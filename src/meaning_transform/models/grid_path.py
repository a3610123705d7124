"""The grid path: the classical meaning-grid quantizer inside the model, as its starting point.

One channel per feature of the data tensor, coded directly:

- continuous: ``d = (value - center) / step`` in native units, rounded to an integer (a grid cell)
  and decoded as ``center + step * round(d)``. ``step`` starts at ``2 * init_k * tolerance`` (so at
  ``init_k = 1`` every value decodes within its tolerance: the classical quantizer) and is learned
  when ``learn_step``: the rate term pays for fine grids, the tolerance loss for coarse ones.
  ``center`` is the multiple of the initial step nearest the training mean (cells on the same
  grid as the classical quantizer's, with small integers to code). A feature that a predicate
  reads (``low_health: current_health < 80``) instead has a cell edge at the threshold, on the
  side the comparison puts it, so rounding never flips the predicate (with several, the one
  whose threshold is nearest the mean in standard deviations).
- binary / categorical: the 0/1 value or category index itself, rounded (exact).

The channels go through an entropy bottleneck of their own (learned factorized prior, rounding
to plain integers), so their rate is real bits per state and they can be coded with
``constriction`` like any entropy-bottleneck latent. The decoder heads start from the grid
value (``skip_heads``) and the learned decoder adds a correction, so an untrained model already
keeps the meaning the classical quantizer keeps, and training can only trade it for bits
knowingly (cf. L3C, Mentzer et al. 2019; Bai et al. 2021 for l-inf near-lossless coding).
"""

from __future__ import annotations

import torch
from torch import nn

from meaning_transform.models.bottlenecks.base import BottleneckOutput, Latent
from meaning_transform.models.bottlenecks.entropy import EntropyBottleneck
from meaning_transform.schema import FeatureSchema

#: a value exactly on a predicate's threshold rounds to its side (grid cells are this far off)
EDGE_EPS = 1e-4

#: logit margin the skip gives a decoded binary value (sigmoid(5) = 0.993), and the penalty per
#: squared index distance of a categorical's other categories
DISCRETE_GAIN = 10.0


class GridPath(nn.Module):
    """Directly coded per-feature grid channels, and the decoder heads they imply."""

    def __init__(
        self,
        schema: FeatureSchema,
        level: float = 1.0,
        init_k: float = 1.0,
        learn_step: bool = True,
        init_scale: float = 32.0,
        density_lr_scale: float = 10.0,
    ) -> None:
        super().__init__()
        if not init_k > 0:
            raise ValueError(f"model.grid_path.init_k must be > 0, got {init_k}")
        mean, std = schema.affine()
        continuous = torch.tensor([f.kind == "continuous" for f in schema.features])
        step = torch.where(continuous, 2.0 * init_k * schema.tolerances(), 1.0).float()
        center = torch.where(continuous, torch.round(mean / step) * step, 0.0)
        shift, middle = torch.zeros_like(center), torch.zeros_like(center)
        for i, (threshold, upper) in _edges(schema).items():
            # cells [t + m step, t + (m+1) step) (or (.., ..] when t belongs below): the channel
            # is offset by half a cell, and a hair, so that t rounds to the side it belongs to
            center[i] = threshold
            shift[i] = -0.5 + (EDGE_EPS if upper else -EDGE_EPS)
            middle[i] = 0.5  # cell m is [t + m step, t + (m+1) step): decode its middle
        for name, value in (
            ("mean", mean),
            ("std", std),
            ("step0", step),
            ("center", center),
            ("shift", shift),
            ("middle", middle),
            ("continuous", continuous),
        ):
            self.register_buffer(name, value, persistent=False)
        self.log_step = nn.Parameter(torch.zeros(len(schema.features)), requires_grad=learn_step)
        self.entropy = EntropyBottleneck(
            len(schema.features),
            level=level,
            init_scale=init_scale,
            density_lr_scale=density_lr_scale,
            round_at_medians=False,
        )
        self._skip = _SkipLayout(schema)
        # Start the coding support where the training data is: mean +- 4 std, in grid cells.
        spread = torch.where(continuous, 4.0 * std / step, 1.0)
        middle_d = (mean - center) / step + shift
        self.entropy.init_quantiles(middle_d - spread, middle_d, middle_d + spread)
        self.register_buffer("two_tol", 2.0 * schema.tolerances().float(), persistent=False)
        weights = [f.weight if f.kind == "continuous" else 0.0 for f in schema.features]
        total = max(schema.total_feature_weight, 1e-12)
        self.register_buffer("outside_weights", torch.tensor(weights) / total, persistent=False)

    @property
    def step(self) -> torch.Tensor:
        """Grid step per data column in native units (1 for binary/categorical columns)."""
        return torch.where(self.continuous, self.step0 * self.log_step.exp(), self.step0)

    def channels(self, x: torch.Tensor) -> torch.Tensor:
        """Data tensor -> unrounded grid coordinates ``d`` [B, F]."""
        native = x * self.std + self.mean
        return (native - self.center) / self.step + self.shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, BottleneckOutput]:
        """Data tensor -> (grid-decoded data tensor, the channels' bottleneck output)."""
        d = self.channels(x)
        out = self.entropy(Latent(z=d, mu=d))
        return self.dequantize(out.z), out

    def dequantize(self, d_hat: torch.Tensor) -> torch.Tensor:
        """Rounded grid coordinates -> data tensor (standardized continuous, exact discrete)."""
        native = (d_hat + self.middle) * self.step + self.center
        return (native - self.mean) / self.std

    def skip_heads(self, g: torch.Tensor) -> torch.Tensor:
        """Decoder heads implied by the grid values ``g`` (data tensor) alone."""
        return self._skip(g)

    def expected_outside(self, schema: FeatureSchema) -> torch.Tensor:
        """Weighted sum over continuous channels of ``max(0, 1 - 1/k)``, the share of uniformly
        spread values a step of k x (2 x tolerance) puts outside tolerance (see GridStepLoss)."""
        k = self.step / self.two_tol.clamp_min(1e-12)
        return (self.outside_weights * (1.0 - 1.0 / k).clamp_min(0.0)).sum()

    def steps_in_tolerances(self, schema: FeatureSchema) -> dict[str, float]:
        """Current grid step of each continuous feature in units of 2 x its tolerance (k)."""
        k = (self.step / self.two_tol.clamp_min(1e-12)).detach()
        return {
            f.name: float(k[i]) for i, f in enumerate(schema.features) if f.kind == "continuous"
        }


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


def _edges(schema: FeatureSchema) -> dict[int, tuple[float, bool]]:
    """Per data column read by a threshold predicate: (threshold, whether the threshold itself
    belongs to the upper cell), for the predicate nearest the feature's mean."""
    columns = schema.columns
    best: dict[int, tuple[float, float, bool]] = {}
    for p in schema.predicates:
        f = schema.feature(p.feature)
        if f.kind != "continuous" or p.op not in (">", ">=", "<", "<="):
            continue
        norm = schema.normalizers[f.name]
        distance = abs(float(p.value) - norm.mean) / norm.std
        i = columns[f.name]
        if i not in best or distance < best[i][0]:
            best[i] = (distance, float(p.value), p.op in (">=", "<"))
    return {i: (t, upper) for i, (_, t, upper) in best.items()}
