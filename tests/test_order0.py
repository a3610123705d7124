"""The order-0 tables mixed into a learned prior: hand-computable numbers, and the coder."""

from __future__ import annotations

import math

import pytest
import torch

from meaning_transform.data import generate_synthetic
from meaning_transform.models.bottlenecks.base import Latent
from meaning_transform.models.bottlenecks.histogram import HistogramEntropyModel
from meaning_transform.models.bottlenecks.order0 import MIN_WEIGHT, OrderZeroMixture
from meaning_transform.models.grid_path import GridPath
from meaning_transform.schema.table import encode, fit


def _learned_three_quarters() -> HistogramEntropyModel:
    """One channel over 0..1 whose learned table is (3/4, 1/4), with order-0 tables attached."""
    model = HistogramEntropyModel(torch.tensor([0]), torch.tensor([1]))
    with torch.no_grad():  # logits are stored / density_lr_scale (10)
        model.table_logits.copy_(torch.tensor([[math.log(3.0), 0.0]]) / 10)
    model.attach_order0(torch.tensor([0]), 2)
    return model.eval()


def test_mixture_weight_and_code_length_are_the_hand_computed_ones():
    """Training values 1, 1, 1: the table is 1 -> 3.5 / 4 = 7/8, escape 0.5 / 4 = 1/8, nothing
    on 0. Validation: one 0 and six 1s. Bits(w) = -log(w 3/4) - 6 log(w/4 + (1 - w) 7/8) is
    least where 7 n0 = 5 w (n0 + n1): w = 1/5. Then 0 costs -log2(3/20) and 1 costs
    -log2(1/20 + 7/10) = -log2(3/4)."""
    model = _learned_three_quarters()
    model.fit_order0(torch.ones(3, 1), torch.tensor([[0.0]] + [[1.0]] * 6))
    assert model.order0.weight.item() == pytest.approx(0.2, abs=1e-7)
    expected = -math.log2(3 / 20) - math.log2(3 / 4)  # the values 0 and 1
    assert model.estimate_bits(torch.tensor([[0.0], [1.0]])) == pytest.approx(expected, 1e-6)
    # the coder's table is the same mixture, the table's escape mass in the overflow bin
    pmf = model.coding_tables().pmfs[0]
    assert pmf == pytest.approx([3 / 20, 3 / 4, 0.8 / 8], abs=1e-7)
    z = torch.tensor([[0.0], [1.0], [1.0], [5.0]])  # 5: past both tables, an escape
    assert torch.equal(model.decompress(model.compress(z), (4, 1)), z)


def test_the_ends_win_when_one_part_is_enough():
    """Validation values the table has seen and the learned prior prices worse: the table
    with the least weight the learned prior keeps (1/256); values only the learned prior gives
    mass to: the learned prior alone."""
    model = _learned_three_quarters()
    model.fit_order0(torch.ones(3, 1), torch.ones(4, 1))
    assert model.order0.weight.item() == MIN_WEIGHT == 1 / 256
    one = MIN_WEIGHT / 4 + (1 - MIN_WEIGHT) * 7 / 8
    assert model.estimate_bits(torch.ones(2, 1)) == pytest.approx(-2 * math.log2(one), 1e-6)
    # a value the table never saw still costs the learned prior's bits plus 8, not 30
    zero = -math.log2(MIN_WEIGHT * 3 / 4)
    assert model.estimate_bits(torch.zeros(1, 1)) == pytest.approx(zero, 1e-6)
    model.fit_order0(torch.ones(3, 1), torch.zeros(4, 1))
    assert model.order0.weight.item() == 1.0


def test_a_covered_table_counts_values_the_training_split_never_held():
    """cover 3 over 0..2 (a categorical's vocabulary) with training values 0, 0, 0: counts
    3.5, 0.5, 0.5 and escape 0.5 over 5, as the classical quantizer's table."""
    mixture = OrderZeroMixture(torch.tensor([0]), 4, cover=torch.tensor([3]))
    mixture.fit_tables(torch.zeros(3, 1))
    torch.testing.assert_close(mixture.probs[0], torch.tensor([0.7, 0.1, 0.1, 0.0]).double())
    assert mixture.escape_mass().item() == pytest.approx(0.1)


def test_training_prices_the_learned_prior_alone():
    model = _learned_three_quarters()
    model.fit_order0(torch.ones(3, 1), torch.ones(4, 1))  # w = 1/256: the table, nearly alone
    model.train()
    out = model(Latent(z=torch.ones(1, 1), mu=torch.ones(1, 1)))
    assert out.rate_bits.item() == pytest.approx(2.0, 1e-6)  # -log2(1/4), the learned entry


def test_grid_path_codes_validation_no_worse_than_either_part(agentfarm_schema_module):
    """An untrained grid path: on the validation states the mixture costs no more than the
    learned prior or the training split's order-0 tables alone, and codes exactly."""
    table = generate_synthetic(3000, seed=3)
    schema = fit(agentfarm_schema_module, table)
    x = encode(schema, table)
    train_x, val_x = x[:2000], x[2000:]
    grid = GridPath(schema, prior_mixture=True).eval()
    learned = sum(r.estimated_bits_per_state for r in grid.coding_report(val_x))
    grid.fit_order0(train_x, val_x)
    mixed = grid.coding_report(val_x)
    assert all(r.exact for r in mixed)
    assert sum(r.estimated_bits_per_state for r in mixed) < learned
    for model, d in grid.coding_parts(val_x):
        w = model.order0.weight.clone()
        mixed_bits = model.estimate_bits(d)
        model.order0.weight.fill_(MIN_WEIGHT)  # the tables, as nearly alone as allowed
        assert mixed_bits <= model.estimate_bits(d) + 1e-6
        model.order0.weight.copy_(w)
