"""Training-curve and semantic-drift plots (Agg backend, rank 0 only)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from meaning_transform.callbacks.history import MetricsHistory, Row, find_history  # noqa: E402
from meaning_transform.io import atomic_write  # noqa: E402

CURVE_TERMS = ("loss", "recon", "kl", "semantic", "grid", "rate")
#: per-term columns of the history that are not loss terms
_NOT_TERMS = ("rate_bits", "weight/")
#: what a term that is in the optimized but not the reported loss is labelled with
_NOT_REPORTED = {
    "bottleneck_aux": "not in the loss: places the coding support (docs/bottleneck_aux.md)"
}


def _series(rows: list[Row], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _epoch_axis(ax: plt.Axes) -> None:
    """Label the x axis ``epoch``, ticks at whole epochs only."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: plt.Figure, path: str | Path) -> None:
    """Write the PNG atomically (``tight_layout`` has already fitted the figure) and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def loss_terms(rows: list[Row]) -> tuple[list[str], dict[str, str]]:
    """(the loss terms worth a panel, in order, {term: why it is left out}).

    Left out: a term whose weight is 0 at every epoch (switched off) and one whose train and
    validation values are 0 at every epoch (e.g. KL of a deterministic encoder).
    """
    names = [k.split("/", 1)[1] for r in rows for k in r if k.startswith(("train/", "val/"))]
    found = [n for n in dict.fromkeys(names) if "/" not in n and not n.startswith(_NOT_TERMS)]
    drift_keys = ("drift", "preservation", "rate_drift", "bits_over_classical", "fixed_rate")
    found = [n for n in found if not n.startswith(drift_keys)]
    ordered = [t for t in CURVE_TERMS if t in found] + [t for t in found if t not in CURVE_TERMS]
    shown, left_out = [], {}
    for term in ordered:
        weights = _series(rows, f"train/weight/{term}")[1]
        values = [v for stage in ("train", "val") for v in _series(rows, f"{stage}/{term}")[1]]
        if weights and not any(weights):
            left_out[term] = "weight 0"
        elif values and not any(values):
            left_out[term] = "0 at every epoch"
        else:
            shown.append(term)
    return shown, left_out


def _share(rows: list[Row], term: str) -> str:
    """``weighted: x% of the loss`` in the last epoch that has both (train)."""
    for r in reversed(rows):
        value, weight, loss = (r.get(f"train/{k}") for k in (term, f"weight/{term}", "loss"))
        if None not in (value, weight, loss) and loss:
            pct = 100 * weight * value / loss
            text = f"{pct:.0f}%" if abs(pct) >= 1 else f"{pct:.2f}%" if pct >= 0.01 else "< 0.01%"
            return f"weighted: {text} of the loss (last epoch)"
    return ""


def training_curves_figure(rows: list[Row]) -> plt.Figure:
    """Total loss and one panel per loss term that is switched on and not always 0."""
    terms, left_out = loss_terms(rows)
    cols = min(3, max(len(terms), 1))
    nrows = math.ceil(len(terms) / cols) or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, term in zip(axes.flat, terms, strict=False):
        for stage, style in (("train", "-"), ("val", "--")):
            x, y = _series(rows, f"{stage}/{term}")
            if x:
                ax.plot(x, y, style, marker="o", markersize=3, label=stage)
        note = _NOT_REPORTED.get(term) or (_share(rows, term) if term != "loss" else "")
        ax.set_title("total loss" if term == "loss" else term, fontsize=11)
        if note:
            ax.text(0.5, 1.0, note, transform=ax.transAxes, ha="center", va="bottom", fontsize=7)
            ax.set_title(ax.get_title() + "\n", fontsize=11)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(terms) :]:
        ax.axis("off")
    title = "Training curves (unweighted terms; train solid, validation dashed)"
    if left_out:
        title += "\nnot shown: " + ", ".join(f"{t} ({why})" for t, why in left_out.items())
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_training_curves(rows: list[Row], path: str | Path) -> None:
    """``training_curves_figure`` as a PNG."""
    _save(training_curves_figure(rows), path)


def _last(rows: list[Row], key: str) -> float | None:
    y = _series(rows, key)[1]
    return y[-1] if y else None


def _bits_panel(ax: plt.Axes, rows: list[Row]) -> None:
    """Validation bits per state against the classical quantizer at the same drift."""
    x, y = _series(rows, "val/rate_bits")
    ax.plot(x, y, color="black", linewidth=2.2, marker="o", markersize=3, label="this model")
    fx, fy = _series(rows, "val/classical/bits_at_drift")
    if fx:
        ax.plot(fx, fy, color="tab:red", linestyle="--", linewidth=1.6, drawstyle="steps-mid")
        ax.lines[-1].set_label("classical floor: the quantizer at the same drift")
    title = "bits per state (validation)"
    if y:
        title += f": {y[-1]:.1f}"
        parts = [(p, _last(rows, f"val/rate_bits_{p}")) for p in ("latent", "grid")]
        if all(v is not None for _, v in parts):
            title += " = " + " + ".join(f"{p} {v:.1f}" for p, v in parts)
        if fy:
            title += f"\nclassical floor {fy[-1]:.1f} (last epoch)"
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("bits per state")
    _epoch_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")


def _drift_groups(rows: list[Row]) -> list[str]:
    return sorted(
        {
            k.removeprefix("val/drift_group/")
            for r in rows
            for k in r
            if k.startswith("val/drift_group/")
        }
    )


def _drift_panel(ax: plt.Axes, rows: list[Row]) -> None:
    """Overall and per-group validation drift."""
    x, y = _series(rows, "val/drift")
    ax.plot(x, y, color="black", linewidth=2.2, marker="o", markersize=3, label="overall", zorder=3)
    tops = list(y)
    for g in _drift_groups(rows):
        gx, gy = _series(rows, f"val/drift_group/{g}")
        ax.plot(gx, gy, marker=".", linewidth=1.2, label=g)
        tops += gy
    ax.set_ylim(0, max(max(tops, default=0) * 1.1, 0.05))  # drift 0 stays visible at the bottom
    kept = " (0: all meaning kept)" if tops and not any(tops) else ""
    ax.set_title(f"semantic drift by group (validation){kept}", fontsize=10)
    ax.set_ylabel("fraction outside tolerance / mismatched")
    _epoch_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def semantic_drift_figure(rows: list[Row]) -> plt.Figure:
    """Bits per state against the classical floor, next to drift overall and by group."""
    fig, (bits, drift) = plt.subplots(1, 2, figsize=(12, 4.2))
    _bits_panel(bits, rows)
    _drift_panel(drift, rows)
    fig.tight_layout()
    return fig


def plot_semantic_drift(rows: list[Row], path: str | Path) -> None:
    """``semantic_drift_figure`` as a PNG."""
    _save(semantic_drift_figure(rows), path)


class CurvePlotter(Callback):
    """Refreshes ``training_curves.png`` and ``semantic_drift.png`` every N epochs and at the end."""

    def __init__(self, output_dir: str, plot_every_n_epochs: int = 5) -> None:
        if plot_every_n_epochs < 1:
            raise ValueError(
                f"callbacks.curve_plotter.plot_every_n_epochs must be >= 1, got {plot_every_n_epochs}"
            )
        self.output_dir = Path(output_dir)
        self.every = plot_every_n_epochs

    def _history(self, trainer: L.Trainer) -> MetricsHistory:
        history = find_history(trainer.callbacks)  # type: ignore[arg-type]
        if history is None:
            raise RuntimeError("CurvePlotter needs the metrics_history callback (MetricsHistory)")
        return history

    def plot(self, trainer: L.Trainer) -> None:
        """Redraw both figures from the metrics history (rank 0)."""
        rows = self._history(trainer).rows
        if trainer.is_global_zero and rows:
            plot_training_curves(rows, self.output_dir / "training_curves.png")
            plot_semantic_drift(rows, self.output_dir / "semantic_drift.png")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Every ``plot_every_n_epochs`` epochs."""
        if (trainer.current_epoch + 1) % self.every == 0:
            self.plot(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Final figures."""
        self.plot(trainer)
