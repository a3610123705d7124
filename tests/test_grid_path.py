"""The grid path and the loss in units of meaning: hand-computable numbers, and guarantees.

The grid path is the classical quantizer inside the model: at initialization, before any
training, every continuous feature decodes within tolerance and every predicate is kept.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meaning_transform.data import generate_synthetic
from meaning_transform.losses import EDGE, GridStepLoss, LossContext, ReconstructionLoss
from meaning_transform.metrics import SemanticDrift
from meaning_transform.models.bottlenecks.base import BottleneckOutput, Latent
from meaning_transform.models.bottlenecks.histogram import HistogramEntropyModel
from meaning_transform.models.grid_path import GridPath
from meaning_transform.schema import FeatureSchema
from meaning_transform.schema.layout import SchemaLayout
from meaning_transform.schema.table import encode, fit

HP = {
    "features": {"hp": {"kind": "continuous", "tolerance": 2.0}},
    "predicates": {},
}


@pytest.fixture(scope="module")
def fitted(agentfarm_schema_module) -> tuple[FeatureSchema, torch.Tensor]:
    table = generate_synthetic(4000, seed=7)
    schema = fit(agentfarm_schema_module, table)
    return schema, encode(schema, table)


def _ctx(schema: FeatureSchema, x: torch.Tensor, heads: torch.Tensor, grid=None) -> LossContext:
    zero = x.new_zeros(())
    out = BottleneckOutput(z=x, rate_bits=x.new_zeros(len(x)), rate_loss=zero, aux_loss=zero)
    return LossContext(x, heads, Latent(z=x, mu=x), out, SchemaLayout(schema), grid)


# ----------------------------------------------------------------- the loss
def test_tolerance_loss_is_zero_within_tolerance_and_grows_past_it():
    """hp: tolerance 2, std 10. Errors of 0, 1, 2 hp cost nothing; 3 hp (1.5 tolerances) costs
    the full outside count (sharpness 8: reached at 1.125) plus huber(1.5 - EDGE)."""
    schema = fit(FeatureSchema.from_config(HP), {"hp": np.array([40.0, 60.0])})  # mean 50 std 10
    loss = ReconstructionLoss(huber_weight=1.0, outside_weight=1.0, sharpness=8.0)
    x = encode(schema, {"hp": np.full(5, 50.0)})
    for err, expected in ((0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (3.0, 1.0 + (1.5 - EDGE) ** 2 / 2)):
        heads = encode(schema, {"hp": np.full(5, 50.0 + err)})
        assert loss(_ctx(schema, x, heads)).item() == pytest.approx(expected, abs=1e-5), err
    # 2.1 hp = 1.05 tolerances: (1.05 - 1.001) * 8 of the count, huber 0.049^2 / 2
    heads = encode(schema, {"hp": np.full(5, 52.1)})
    excess = 1.05 - EDGE
    assert loss(_ctx(schema, x, heads)).item() == pytest.approx(8 * excess + excess**2 / 2, 1e-3)


def test_grid_step_loss_is_the_expected_outside_share(fitted):
    """k = 2 on one of 9 equally weighted features -> half its values outside -> 0.5 / 9."""
    schema, x = fitted
    grid = GridPath(schema)
    assert GridStepLoss()(_ctx(schema, x[:4], x[:4], grid)).item() == 0.0
    with torch.no_grad():
        grid.log_step[schema.columns["age"]] = math.log(2.0)
    expected = 0.5 / len(schema.features)
    assert GridStepLoss()(_ctx(schema, x[:4], x[:4], grid)).item() == pytest.approx(expected)


# ----------------------------------------------------------------- the grid path
def test_untrained_grid_path_keeps_all_meaning(fitted):
    """Before any training (eval rounding), the grid alone: every feature within tolerance,
    every predicate kept, drift exactly 0, whatever the learned decoder's correction is."""
    schema, x = fitted
    grid = GridPath(schema).eval()
    g, out = grid(x)
    correction = torch.randn(len(x), schema.head_dim) * 100  # the worst a decoder could add
    heads = grid.heads(g, correction)
    metric = SemanticDrift(schema)
    metric.update(x, SchemaLayout(schema).point_estimate(heads))
    result = metric.compute()
    assert result["drift"].item() == 0.0, {k: float(v) for k, v in result.items() if v > 0}
    assert torch.isfinite(out.rate_bits).all() and (out.rate_bits > 0).all()


def test_grid_channels_are_coded_within_one_percent(fitted):
    schema, x = fitted
    grid = GridPath(schema).eval()
    reports = grid.coding_report(x)
    assert len(reports) == 2  # smooth and table parts
    for r in reports:
        assert r.exact
        assert r.coded_bits_per_state == pytest.approx(r.estimated_bits_per_state, rel=0.01)


def test_histogram_model_prices_integers_by_its_table():
    """Two channels, tables over 0..1 and -1..1; at integers the likelihood is the table's."""
    model = HistogramEntropyModel(torch.tensor([0, -1]), torch.tensor([1, 1])).eval()
    with torch.no_grad():
        model.table_logits.copy_(torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, 0.0, 0.0]]) / 10)
    lik = model.likelihood(torch.tensor([[0.0, -1.0], [1.0, 1.0]]))
    torch.testing.assert_close(lik, torch.tensor([[0.75, 1 / 3], [0.25, 1 / 3]]))
    # outside the support: the floor (an escape, coded by coding.py)
    assert model.likelihood(torch.tensor([[5.0, 0.0]]))[0, 0].item() == pytest.approx(1e-9)
    # halfway between two integers: the mean of their masses (piecewise-linear CDF)
    assert model.likelihood(torch.tensor([[0.5, 0.0]]))[0, 0].item() == pytest.approx(0.5)


def test_histogram_forward_prices_each_integer_by_its_table_entry():
    """The forward gathers each integer's probability (the floor outside the support): the
    CDF difference in exact arithmetic, including rare symbols float32 differences blur."""
    lo, hi = torch.tensor([0, -3, -40]), torch.tensor([1, 4, 40])
    model = HistogramEntropyModel(lo, hi)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.table_logits.copy_(torch.randn(model.table_logits.shape, generator=gen))
    y = torch.randint(-50, 50, (300, 3), generator=gen).float()
    probs = model.probabilities().detach()
    expected = torch.full_like(y, 1e-9)
    for c in range(3):
        inside = (y[:, c] >= lo[c]) & (y[:, c] <= hi[c])
        expected[inside, c] = probs[c, (y[inside, c] - lo[c]).long()].clamp_min(1e-9)
    out = model(Latent(z=y, mu=y))
    torch.testing.assert_close(out.rate_bits, -torch.log2(expected).sum(1))
    out.rate_bits.sum().backward()  # the tables learn from it
    assert model.table_logits.grad.abs().sum() > 0
