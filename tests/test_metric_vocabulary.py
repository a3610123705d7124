"""The metrics a run logs, with hand-computable numbers: loss means, rate-drift, classical floor."""

from __future__ import annotations

import pytest
import torch

from meaning_transform.baselines import classical_metrics
from meaning_transform.metrics import MeanVector


def test_mean_vector_weights_each_update_by_its_states():
    m = MeanVector(["loss", "rate_bits"])
    m.update(torch.tensor([1.0, 10.0]), 3)  # 3 states
    m.update(torch.tensor([5.0, 30.0]), 1)  # 1 state
    out = m.compute()
    assert out["loss"].item() == pytest.approx((3 * 1 + 5) / 4)
    assert out["rate_bits"].item() == pytest.approx((3 * 10 + 30) / 4)
    m.reset()
    m.update(torch.tensor([2.0, 4.0]))
    assert m.compute()["loss"].item() == 2.0


def _baselines(curve: list[tuple[float, float]]) -> dict:
    return {
        "quantizer": [{"drift": d, "bits_per_state": b} for d, b in curve],
        "delta": [{"drift": 0.0, "bits_per_state": 3.0}],
    }


def test_classical_metrics_read_the_quantizer_curve_at_the_models_drift():
    b = _baselines([(0.0, 30.0), (0.1, 20.0), (0.3, 10.0)])
    m = classical_metrics(b, drift=0.05, bits=24.0)
    assert m["classical/quantizer_bits"] == 30.0 and m["classical/delta_bits"] == 3.0
    assert m["classical/bits_at_drift"] == pytest.approx(25.0)  # halfway from 30 to 20
    assert m["bits_over_classical"] == pytest.approx(-1.0)  # one bit below the floor
    assert classical_metrics(b, drift=0.9, bits=12.0)["bits_over_classical"] == 2.0  # flat past
    assert classical_metrics(b, drift=0.0, bits=31.0)["bits_over_classical"] == 1.0


def test_classical_curve_never_charges_more_bits_for_more_drift():
    # a coarser setting that loses more and costs more is never the floor: 20 bits hold at 0.2
    b = _baselines([(0.0, 30.0), (0.1, 20.0), (0.2, 22.0)])
    assert classical_metrics(b, drift=0.2, bits=20.0)["classical/bits_at_drift"] == 20.0
