"""Per-run plots: which loss terms get a panel, bits against the classical floor, drift by group."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from meaning_transform.callbacks.plotting import (
    _share,
    loss_terms,
    plot_semantic_drift,
    plot_training_curves,
    semantic_drift_figure,
    training_curves_figure,
)


def _rows() -> list[dict[str, float]]:
    """Three epochs as MetricsHistory records them: kl switched off, semantic always 0."""
    rows = []
    for epoch, (recon, bits, floor, drift) in enumerate(
        [(0.5, 40.0, 30.0, 0.2), (0.1, 31.0, 29.0, 0.1), (0.02, 29.0, 28.5, 0.0)], start=1
    ):
        row = {"epoch": epoch, "step": 10 * epoch, "lr": 1e-3}
        for stage in ("train", "val"):
            row |= {
                f"{stage}/loss": recon + 0.01 * bits,
                f"{stage}/recon": recon,
                f"{stage}/kl": 0.3,
                f"{stage}/semantic": 0.0,
                f"{stage}/rate": bits,
                f"{stage}/bottleneck_aux": 100.0 * epoch,
            }
        row |= {"train/rate_bits": bits, "train/weight/recon": 1.0, "train/weight/kl": 0.0}
        row |= {"train/weight/semantic": 0.5, "train/weight/rate": 0.01}
        row |= {"train/weight/bottleneck_aux": 1.0}
        row |= {
            "val/rate_bits": bits,
            "val/rate_bits_latent": 1.0,
            "val/rate_bits_grid": bits - 1.0,
            "val/drift": drift,
            "val/drift_group/spatial": 2 * drift,
            "val/drift_group/status": 0.0,
            "val/drift/position_x": drift,
            "val/classical/bits_at_drift": floor,
            "val/bits_over_classical": bits - floor,
            "val/grid_k/position_x": 1.0,
            "val/mae/position_x": 0.1,
        }
        rows.append(row)
    return rows


def test_loss_terms_leave_out_switched_off_and_always_zero_terms():
    shown, left_out = loss_terms(_rows())
    assert shown == ["loss", "recon", "rate", "bottleneck_aux"]
    assert left_out == {"kl": "weight 0", "semantic": "0 at every epoch"}


def test_share_is_the_weighted_term_over_the_loss_in_the_last_epoch():
    rows = _rows()  # last epoch: loss = 0.02 + 0.01 * 29 = 0.31
    assert _share(rows, "rate") == "weighted: 94% of the loss (last epoch)"  # 0.29 / 0.31
    assert _share(rows, "recon") == "weighted: 6% of the loss (last epoch)"  # 0.02 / 0.31
    rows[-1]["train/recon"] = 1e-6
    assert _share(rows, "recon") == "weighted: < 0.01% of the loss (last epoch)"


def test_training_curves_have_a_panel_per_shown_term_and_name_the_others():
    fig = training_curves_figure(_rows())
    titles = [ax.get_title().strip() for ax in fig.axes if ax.axison]
    assert titles == ["total loss", "recon", "rate", "bottleneck_aux"]
    assert "not shown: kl (weight 0), semantic (0 at every epoch)" in fig._suptitle.get_text()
    aux = next(ax for ax in fig.axes if ax.get_title().startswith("bottleneck_aux"))
    assert [t.get_text() for t in aux.texts] == [
        "not in the loss: places the coding support (docs/bottleneck_aux.md)"
    ]
    plt.close(fig)


def test_bits_panel_draws_the_classical_floor_next_to_drift_by_group():
    fig = semantic_drift_figure(_rows())
    bits, drift = fig.axes
    lines = {line.get_label(): list(line.get_ydata()) for line in bits.lines}
    assert lines["this model"] == [40.0, 31.0, 29.0]
    assert lines["classical floor: the quantizer at the same drift"] == [30.0, 29.0, 28.5]
    assert bits.get_title() == (
        "bits per state (validation): 29.0 = latent 1.0 + grid 28.0\n"
        "classical floor 28.5 (last epoch)"
    )
    groups = {line.get_label(): list(line.get_ydata()) for line in drift.lines}
    assert groups == {
        "overall": [0.2, 0.1, 0.0],
        "spatial": [0.4, 0.2, 0.0],
        "status": [0.0, 0.0, 0.0],
    }
    plt.close(fig)


def test_drift_of_zero_says_all_meaning_is_kept():
    rows = _rows()
    for row in rows:
        for key in ("val/drift", "val/drift_group/spatial"):
            row[key] = 0.0
    fig = semantic_drift_figure(rows)
    assert fig.axes[1].get_title().endswith("(0: all meaning kept)")
    assert fig.axes[1].get_ylim() == pytest.approx((0.0, 0.05))
    plt.close(fig)


def test_plots_write_pngs(tmp_path):
    plot_training_curves(_rows(), tmp_path / "curves.png")
    plot_semantic_drift(_rows(), tmp_path / "drift.png")
    for name in ("curves.png", "drift.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
