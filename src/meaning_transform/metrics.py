"""Semantic drift and rate, accumulated over a whole epoch (torchmetrics; synced under DDP).

Definitions (DESIGN.md, "Core definitions"):

- continuous feature: mean |x - x_hat| in native units (``mae/<feature>``), and the fraction of
  states where that error exceeds the feature's tolerance (its error rate);
- binary / categorical feature, predicate: mismatch rate between original and decoded state;
- semantic drift: schema-weighted mean of those error rates over features and predicates
  (0 = nothing lost, 1 = everything lost); per group: the same mean within the group;
- preservation = 1 - drift.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from meaning_transform.models.bottlenecks.vq import entropy_bits
from meaning_transform.schema import FeatureSchema
from meaning_transform.schema.layout import SchemaLayout

#: relative float32 slack on a continuous feature's tolerance (see SemanticDrift.update)
TOLERANCE_SLACK = 1e-4


class SemanticDrift(Metric):
    """Per-feature, per-predicate, per-group and overall drift over all states seen."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        self.schema = schema
        n_feat, n_pred = len(schema.features), len(schema.predicates)
        self.add_state("abs_error", torch.zeros(n_feat, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("errors", torch.zeros(n_feat, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "pred_errors", torch.zeros(n_pred, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.layout = SchemaLayout(schema)
        self.register_buffer(
            "_continuous",
            torch.tensor([f.kind == "continuous" for f in schema.features]),
            persistent=False,
        )
        weights = [f.weight for f in schema.features] + [p.weight for p in schema.predicates]
        groups = [f.group for f in schema.features] + [p.group for p in schema.predicates]
        self.register_buffer(
            "_weights", torch.tensor(weights, dtype=torch.float64), persistent=False
        )
        self._groups = groups

    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        """Accumulate one batch: ``x`` data tensor, ``x_hat`` its point reconstruction."""
        native_err = (x - x_hat).abs() * self.layout.std
        # Relative slack: data tensors are float32, so an error of exactly one tolerance (a
        # value on a grid cell's edge) comes back up to a few ulps of |x| * std over it, e.g.
        # ~4e-5 at age ~500; an absolute 1e-6 would count such an error as outside.
        outside = torch.where(
            self._continuous, native_err > self.layout.tolerance * (1 + TOLERANCE_SLACK), x != x_hat
        )
        self.abs_error += torch.where(self._continuous, native_err, 0.0).sum(0).double()
        self.errors += outside.sum(0).double()
        if self.schema.predicates:
            truth = self.layout.evaluate_predicates(x)
            decoded = self.layout.evaluate_predicates(x_hat)
            self.pred_errors += (truth != decoded).sum(0).double()
        self.count += x.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        """``drift``, ``preservation``, ``drift/<feature|predicate>``, ``drift_group/<g>``,
        ``preservation_group/<g>``, ``mae/<f>``."""
        n = self.count.clamp_min(1.0)
        rates = torch.cat([self.errors, self.pred_errors]) / n
        names = self.schema.names + [p.name for p in self.schema.predicates]
        out: dict[str, torch.Tensor] = {}
        drift = _weighted_mean(rates, self._weights)
        out["drift"] = drift
        out["preservation"] = 1.0 - drift
        for group in dict.fromkeys(self._groups):
            mask = torch.tensor([g == group for g in self._groups], device=rates.device)
            out[f"drift_group/{group}"] = _weighted_mean(rates[mask], self._weights[mask])
            out[f"preservation_group/{group}"] = 1.0 - out[f"drift_group/{group}"]
        for name, rate in zip(names, rates, strict=True):
            out[f"drift/{name}"] = rate
        for f, err in zip(self.schema.features, self.abs_error / n, strict=True):
            if f.kind == "continuous":
                out[f"mae/{f.name}"] = err
        return {k: v.float() for k, v in out.items()}


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    total = weights.sum()
    if total <= 0:
        return values.new_zeros(())
    return (values * weights).sum() / total


class RateMeter(Metric):
    """Bits per state over an epoch: the latent's mean rate (for discrete codes the entropy of
    their usage), plus the grid channels' mean rate when the model has a grid path."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, codebook_size: int = 0, has_grid: bool = False) -> None:
        super().__init__()
        self.has_grid = has_grid
        self.add_state("bits", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("grid_bits", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "code_counts", torch.zeros(codebook_size, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(
        self,
        rate_bits: torch.Tensor,
        codes: torch.Tensor | None = None,
        grid_bits: torch.Tensor | None = None,
    ) -> None:
        """Accumulate per-state latent bits, code indices (discrete codes) and grid bits."""
        self.bits += rate_bits.detach().sum().double()
        self.count += rate_bits.shape[0]
        if grid_bits is not None:
            self.grid_bits += grid_bits.detach().sum().double()
        if codes is not None and self.code_counts.numel():
            self.code_counts += torch.bincount(
                codes.flatten(), minlength=self.code_counts.numel()
            ).double()

    def compute(self) -> dict[str, torch.Tensor]:
        """``rate_bits`` (total); with codes ``codes_used``, ``perplexity``; with a grid path
        ``rate_bits_latent`` and ``rate_bits_grid``."""
        n = self.count.clamp_min(1.0)
        out: dict[str, torch.Tensor] = {}
        if self.code_counts.numel() and self.code_counts.sum() > 0:
            latent = entropy_bits(self.code_counts)
            out["codes_used"] = (self.code_counts > 0).sum()
            out["perplexity"] = torch.exp2(latent)
        else:
            latent = self.bits / n
        out["rate_bits"] = latent + self.grid_bits / n
        if self.has_grid:
            out["rate_bits_latent"] = latent
            out["rate_bits_grid"] = self.grid_bits / n
        return {k: v.float() for k, v in out.items()}


class MeanVector(Metric):
    """Weighted means of a fixed set of named values over an epoch (losses, loss weights).

    One update per step adds ``values * weight`` and ``weight`` to float64 sums kept on the
    values' device (no host sync); ``compute`` returns ``{name: mean}``. Synced under DDP, so
    the mean is over every state of every rank.
    """

    full_state_update = False

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = list(names)
        self.add_state("sums", torch.zeros(len(names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor, weight: float = 1.0) -> None:
        """Accumulate one step's values (1-D, in ``names`` order) with ``weight`` (e.g. states)."""
        self.sums += values.detach().double() * weight
        self.weight += weight

    def compute(self) -> dict[str, torch.Tensor]:
        """Mean of each named value."""
        means = (self.sums / self.weight.clamp_min(1e-12)).float()
        return dict(zip(self.names, means, strict=True))
