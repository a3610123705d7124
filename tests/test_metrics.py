"""Semantic drift and rate metrics, checked against numbers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meaning_transform.metrics import RateMeter, SemanticDrift
from meaning_transform.schema import FeatureSchema
from meaning_transform.schema.table import encode, fit

DECL = {
    "features": {
        "x": {"kind": "continuous", "tolerance": 0.5, "group": "spatial", "weight": 2.0},
        "hp": {"kind": "continuous", "tolerance": 2.0, "group": "status"},
        "defending": {"kind": "binary", "group": "status"},
        "role": {"kind": "categorical", "group": "role"},
    },
    "predicates": {"low": {"feature": "hp", "op": "<", "value": 30, "group": "status"}},
}
ORIGINAL = {
    "x": np.array([0.0, 10.0, 20.0, 30.0]),
    "hp": np.array([100.0, 50.0, 31.0, 10.0]),
    "defending": np.array([0, 1, 1, 0]),
    "role": np.array(["a", "b", "a", "b"], dtype=object),
}


def schema() -> FeatureSchema:
    return fit(FeatureSchema.from_config(DECL), ORIGINAL)


def drift_of(decoded: dict[str, np.ndarray]) -> dict[str, float]:
    s = schema()
    m = SemanticDrift(s)
    m.update(encode(s, ORIGINAL), encode(s, decoded))
    return {k: v.item() for k, v in m.compute().items()}


def test_perfect_reconstruction_has_zero_drift():
    d = drift_of(ORIGINAL)
    assert d["drift"] == 0.0 and d["preservation"] == 1.0
    assert all(v == 0.0 for k, v in d.items() if k.startswith(("drift", "mae")))


def test_hand_built_four_states():
    decoded = {
        "x": np.array([0.4, 10.0, 21.0, 30.0]),  # errors .4 1 -> 1 of 4 outside 0.5
        "hp": np.array(
            [100.0, 53.0, 29.0, 10.0]
        ),  # errors 3, 2 -> 1 of 4 outside 2.0 (2.0 is within)
        "defending": np.array([0, 0, 1, 0]),  # 1 mismatch
        "role": np.array(["a", "b", "b", "b"], dtype=object),  # 1 mismatch
    }
    d = drift_of(decoded)
    assert d["mae/x"] == pytest.approx(1.4 / 4, abs=1e-5)
    assert d["mae/hp"] == pytest.approx(5 / 4, abs=1e-4)
    assert d["drift/x"] == 0.25
    assert d["drift/hp"] == 0.25
    assert d["drift/defending"] == 0.25
    assert d["drift/role"] == 0.25
    assert d["drift/low"] == 0.25  # hp 31 -> 29 crosses the threshold
    # weights: x 2, others 1 -> (2*.25 + .25 + .25 + .25 + .25) / 6
    assert d["drift"] == pytest.approx(1.5 / 6, abs=1e-6)
    assert d["preservation"] == pytest.approx(1 - 1.5 / 6, abs=1e-6)
    assert d["drift_group/spatial"] == 0.25
    assert d["drift_group/status"] == pytest.approx((0.25 + 0.25 + 0.25) / 3, abs=1e-6)
    assert d["drift_group/role"] == 0.25


def test_predicting_the_mean_drifts_clearly():
    s = schema()
    x = encode(s, ORIGINAL)
    mean_pred = x.mean(0, keepdim=True).expand_as(x).clone()
    mean_pred[:, 2] = 0.0  # majority class of a binary
    mean_pred[:, 3] = 0.0
    m = SemanticDrift(s)
    m.update(x, mean_pred)
    assert m.compute()["drift"].item() > 0.4


def test_drift_accumulates_over_batches_like_one_batch():
    s = schema()
    x = encode(s, ORIGINAL)
    noisy = x + torch.tensor([0.3, 0.2, 0.0, 0.0])
    whole, parts = SemanticDrift(s), SemanticDrift(s)
    whole.update(x, noisy)
    parts.update(x[:1], noisy[:1])
    parts.update(x[1:], noisy[1:])
    for k, v in whole.compute().items():
        assert parts.compute()[k].item() == pytest.approx(v.item(), abs=1e-7), k


def test_rate_meter_mean_and_code_entropy():
    m = RateMeter()
    m.update(torch.tensor([1.0, 3.0]))
    m.update(torch.tensor([5.0, 7.0]))
    assert m.compute()["rate_bits"].item() == 4.0
    codes = RateMeter(codebook_size=8)
    codes.update(torch.zeros(4), torch.tensor([0, 1, 2, 3]))
    out = codes.compute()
    assert out["rate_bits"].item() == pytest.approx(2.0)  # 4 equally used codes
    assert out["codes_used"].item() == 4 and out["perplexity"].item() == pytest.approx(4.0)
    assert math.isclose(codes.code_counts.sum().item(), 4)


def _age_schema(mean: float, std: float) -> FeatureSchema:
    """One continuous feature ``age`` (tolerance 5) standardized with (mean, std)."""
    decl = {"features": {"age": {"kind": "continuous", "tolerance": 5.0}}}
    return FeatureSchema.from_config(
        {**decl, "normalizers": {"age": {"mean": mean, "std": std}}, "fitted": True}
    )


def test_tolerance_slack_is_relative():
    # std 1: data units are native units. Tolerance 5 with slack 1e-4 allows up to 5.0005.
    m = SemanticDrift(_age_schema(0.0, 1.0))
    x = torch.zeros(3, 1)
    x_hat = torch.tensor([[5.0], [5.00025], [5.001]])  # within, within (0.5e-4 over), outside
    m.update(x, x_hat)
    assert m.compute()["drift/age"].item() == pytest.approx(1 / 3)


def test_an_error_of_exactly_one_tolerance_at_age_480_is_within():
    # 480 and 485 in float32 data units (mean 250, std 150): 1.5333333 and 1.5666667, whose
    # difference times 150 is 5.0000134 -- over 5 + 1e-6, within 5 * (1 + 1e-4).
    s = _age_schema(250.0, 150.0)
    x = encode(s, {"age": np.array([480.0])})
    x_hat = encode(s, {"age": np.array([485.0])})
    assert ((x - x_hat).abs() * 150.0).item() > 5.0 + 1e-6
    m = SemanticDrift(s)
    m.update(x, x_hat)
    assert m.compute()["drift"].item() == 0.0
