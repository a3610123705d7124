"""Loss terms. Each is a class configured in ``conf/loss/*.yaml``; the total is their weighted sum.

A new term is a subclass of :class:`LossTerm` plus a YAML entry under ``loss.terms``; nothing
else changes. Every term is logged unweighted as ``<stage>/<name>`` and its weight as
``<stage>/weight/<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from meaning_transform.kl_schedule import SCHEDULES, kl_factor
from meaning_transform.models.bottlenecks.base import BottleneckOutput, Latent
from meaning_transform.models.bottlenecks.identity import kl_nats
from meaning_transform.models.grid_path import GridPath, GridSteps
from meaning_transform.schema.layout import SchemaLayout


@dataclass
class LossContext:
    """Everything a loss term may read for one batch."""

    x: torch.Tensor  # data tensor [B, F]
    heads: torch.Tensor  # decoder output [B, head_dim]
    latent: Latent
    bottleneck: BottleneckOutput
    layout: SchemaLayout  # the schema's tensor layout (``layout.schema`` is the schema)
    grid: GridPath | None = None  # the model's grid path, if it has one
    grid_steps: GridSteps | None = None  # its steps in this forward (else computed again)


class LossTerm(nn.Module):
    """A weighted loss term; ``forward`` returns the unweighted value.

    ``reported = False`` marks a term that is optimized but kept out of the reported ``loss``
    (the rate-distortion objective that checkpointing and early stopping monitor).
    """

    reported: bool = True

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"{type(self).__name__}: weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def weight_at(self, progress: float) -> float:
        """The weight in effect after ``progress`` epochs (constant unless scheduled)."""
        return self.weight

    def forward(self, ctx: LossContext) -> torch.Tensor:  # pragma: no cover - interface
        """Unweighted scalar value of the term for one batch."""
        raise NotImplementedError


#: |e| (tolerance units) where the outside-tolerance count starts: a hair past 1, since values on
#: a grid cell's edge decode exactly one tolerance away and float rounding must not make them
#: pull on the grid step (drift counts |e| > 1 + 1e-4 the same way, see metrics.py)
EDGE = 1.0 + 1e-3


class ReconstructionLoss(LossTerm):
    """Typed reconstruction in the units of meaning; schema-weighted mean over features.

    Continuous features are judged in units of their tolerance, ``e = (x_hat - x) / tolerance``
    (native units), where drift counts ``|e| > 1`` as meaning lost. Within tolerance nothing is
    lost, so the loss is 0 there (a loss that still rewarded smaller errors inside tolerance
    would buy precision nobody reads with bits: measured, it halved every grid step, +1 bit per
    feature). Beyond it: ``outside_weight * min(1, sharpness * (|e| - 1))``, a differentiable
    count of the states outside tolerance (the fraction drift reports, reached at
    ``|e| = 1 + 1/sharpness``), plus ``huber_weight * huber(|e| - 1)`` so far-off states still
    pull back in. Binary features: BCE on the logit; categorical: cross-entropy.
    """

    def __init__(
        self,
        weight: float = 1.0,
        huber_weight: float = 1.0,
        outside_weight: float = 1.0,
        sharpness: float = 8.0,
    ) -> None:
        super().__init__(weight)
        for name, value in (("huber_weight", huber_weight), ("outside_weight", outside_weight)):
            if not value >= 0:
                raise ValueError(f"loss.{name} must be >= 0, got {value}")
        if not sharpness > 0:
            raise ValueError(f"loss.sharpness must be > 0, got {sharpness}")
        self.huber_weight = float(huber_weight)
        self.outside_weight = float(outside_weight)
        self.sharpness = float(sharpness)

    def tolerance_loss(self, e: torch.Tensor) -> torch.Tensor:
        """Per-element loss of errors ``e`` in tolerance units."""
        excess = (e.abs() - EDGE).clamp_min(0.0)
        huber = F.huber_loss(excess, torch.zeros_like(excess), reduction="none", delta=1.0)
        outside = (self.sharpness * excess).clamp_max(1.0)
        return _weighted(huber, self.huber_weight) + _weighted(outside, self.outside_weight)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        """Weighted mean of per-feature losses (vectorized per kind: this runs every step)."""
        layout, x, heads = ctx.layout, ctx.x, ctx.heads
        schema = layout.schema
        terms = []
        cols, head_cols, w = layout.kind("continuous")
        if cols.numel():
            e = (heads[:, head_cols] - x[:, cols]) * layout.continuous_units
            terms.append((self.tolerance_loss(e).mean(0) * w).sum())
        cols, head_cols, w = layout.kind("binary")
        if cols.numel():
            per_feature = _bce(heads[:, head_cols], x[:, cols], reduction="none").mean(0)
            terms.append((per_feature * w).sum())
        slices = schema.head_slices
        for col in schema.index_of_kind("categorical"):
            f = schema.features[col]
            if f.weight:
                ce = F.cross_entropy(heads[:, slices[f.name]], x[:, col].long())
                terms.append(_weighted(ce, f.weight))
        total = sum(terms[1:], terms[0]) if terms else heads.new_zeros(())
        return total / max(schema.total_feature_weight, 1e-12)


def _bce(logits: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)


def _weighted(value: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight * value``, skipping the multiply (an op each step, forward and backward) when
    the weight is 1."""
    return value if weight == 1.0 else weight * value


class SemanticLoss(LossTerm):
    """BCE between each predicate's soft value on the decoded state and its truth on the input,
    capped once the decoded state is ``margin`` (logit units; tolerances for a threshold
    predicate) on the right side: past that, pushing further would only buy errors beyond
    tolerance, which drift counts (measured: uncapped, decoded ``starvation_counter`` was pushed
    past its tolerance to make ``starving`` surer)."""

    def __init__(self, weight: float = 1.0, margin: float = 0.5) -> None:
        super().__init__(weight)
        if not margin >= 0:
            raise ValueError(f"loss.semantic_margin must be >= 0, got {margin}")
        self.floor = F.softplus(torch.tensor(-float(margin))).item()  # BCE at the margin

    def forward(self, ctx: LossContext) -> torch.Tensor:
        """Predicate-weighted mean capped BCE."""
        layout = ctx.layout
        schema = layout.schema
        if not schema.predicates:
            return ctx.heads.new_zeros(())
        truth = layout.evaluate_predicates(ctx.x).to(ctx.heads.dtype)
        prob = layout.soft_predicates(ctx.heads).clamp(1e-6, 1 - 1e-6)
        bce = F.binary_cross_entropy(prob, truth, reduction="none")
        bce = (bce - self.floor).clamp_min(0.0).mean(dim=0)
        return (bce * layout.predicate_weights).sum() / layout.predicate_weight_total


class GridStepLoss(LossTerm):
    """Expected share of meaning lost by the grid path's steps, independent of the batch.

    A continuous value falls anywhere in its grid cell, so a step of ``k`` x (2 x tolerance)
    leaves a fraction ``max(0, 1 - 1/k)`` of states outside tolerance: the schema-weighted sum
    of that over continuous features, normalized like ``recon``: with the rate, the only thing
    the step learns from (see GridPath.forward for why not from the batch). 0 without a grid
    path.
    """

    def forward(self, ctx: LossContext) -> torch.Tensor:
        """Weighted expected outside-tolerance fraction of the grid's continuous channels."""
        if ctx.grid is None:
            return ctx.heads.new_zeros(())
        return ctx.grid.expected_outside(ctx.grid_steps)


class KLLoss(LossTerm):
    """KL(q(z|x) || N(0, I)) in nats per state, with an optional beta-annealing ``schedule``
    (one of ``kl_schedule.SCHEDULES``)."""

    def __init__(
        self,
        weight: float = 0.1,
        schedule: str = "constant",
        warmup_epochs: float = 10.0,
        cycle_epochs: float = 10.0,
    ) -> None:
        super().__init__(weight)
        if schedule not in SCHEDULES:
            raise ValueError(f"loss.kl_schedule={schedule!r} is not one of {SCHEDULES}")
        if warmup_epochs <= 0 or cycle_epochs <= 0:
            raise ValueError("loss.kl_warmup_epochs and loss.kl_cycle_epochs must be > 0")
        self.schedule = schedule
        self.warmup_epochs = float(warmup_epochs)
        self.cycle_epochs = float(cycle_epochs)

    def weight_at(self, progress: float) -> float:
        """Annealed weight after ``progress`` epochs."""
        factor = kl_factor(self.schedule, progress, self.warmup_epochs, self.cycle_epochs)
        return self.weight * factor

    def forward(self, ctx: LossContext) -> torch.Tensor:
        """Mean KL over the batch (0 for a point latent), times the bottleneck's ``kl_scale``."""
        lat = ctx.latent
        if lat.log_var is None:
            return ctx.heads.new_zeros(())
        return ctx.bottleneck.kl_scale * kl_nats(lat.mu, lat.log_var).mean()


class RateLoss(LossTerm):
    """The bottleneck's differentiable rate term (already scaled by ``compression.level``)."""

    def forward(self, ctx: LossContext) -> torch.Tensor:
        """Bottleneck-provided rate loss."""
        return ctx.bottleneck.rate_loss


class BottleneckAuxLoss(LossTerm):
    """The bottleneck's own training loss (vq commitment, entropy-model quantiles).

    Optimized, but not part of the reported ``loss``: the entropy model's quantile loss only
    places the coding support and would otherwise swamp the objective that is monitored.
    """

    reported = False

    def forward(self, ctx: LossContext) -> torch.Tensor:
        """Bottleneck-provided auxiliary loss."""
        return ctx.bottleneck.aux_loss


class CompositeLoss(nn.Module):
    """Named loss terms and their weighted sum."""

    def __init__(self, terms: dict[str, LossTerm]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("loss.terms is empty: at least one loss term is needed")
        for name, term in terms.items():
            if not isinstance(term, LossTerm):
                raise TypeError(f"loss.terms.{name} is a {type(term).__name__}, not a LossTerm")
        self.terms = nn.ModuleDict(terms)
        self.register_buffer(
            "_reported", torch.tensor([float(t.reported) for t in terms.values()]), persistent=False
        )

    @property
    def names(self) -> list[str]:
        """Term names in order."""
        return list(self.terms)

    def weights(self, progress: float) -> torch.Tensor:
        """Weight of each term after ``progress`` epochs."""
        return torch.tensor([t.weight_at(progress) for t in self.terms.values()])

    def forward(
        self, ctx: LossContext, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(optimized total, reported loss, unweighted values [T], weights [T]) under the term
        ``weights`` in effect (``self.weights(progress)``: a tensor, computed by the caller, so
        that a compiled step sees no Python float that changes every step)."""
        values = torch.stack([term(ctx) for term in self.terms.values()])
        weights = weights.to(values.device, values.dtype)
        weighted = values * weights
        return weighted.sum(), (weighted * self._reported).sum(), values, weights
