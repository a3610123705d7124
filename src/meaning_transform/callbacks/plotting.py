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

CURVE_TERMS = ("loss", "recon", "kl", "semantic", "rate")


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


def plot_training_curves(rows: list[Row], path: str | Path) -> None:
    """One panel per loss component (total, recon, KL, semantic, rate), train and val."""
    terms = [t for t in CURVE_TERMS if any(f"train/{t}" in r or f"val/{t}" in r for r in rows)]
    extra = sorted(
        {k.split("/", 1)[1] for r in rows for k in r if k.startswith("train/")}
        - set(CURVE_TERMS)
        - {"rate_bits"}
    )
    terms += [t for t in extra if not t.startswith("weight/")]
    cols = min(3, max(len(terms), 1))
    nrows = math.ceil(len(terms) / cols) or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, term in zip(axes.flat, terms, strict=False):
        for stage, style in (("train", "-"), ("val", "--")):
            x, y = _series(rows, f"{stage}/{term}")
            if x:
                ax.plot(x, y, style, marker="o", markersize=3, label=stage)
        ax.set_title("total loss" if term == "loss" else term)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(terms) :]:
        ax.axis("off")
    fig.suptitle("Training curves")
    fig.tight_layout()
    _save(fig, path)


def plot_semantic_drift(rows: list[Row], path: str | Path) -> None:
    """Overall and per-group drift over epochs (tolerance-based), bits per state on a 2nd axis."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x, y = _series(rows, "val/drift")
    ax.plot(x, y, color="black", linewidth=2.2, marker="o", markersize=3, label="overall")
    groups = sorted(
        {
            k.removeprefix("val/drift_group/")
            for r in rows
            for k in r
            if k.startswith("val/drift_group/")
        }
    )
    for g in groups:
        gx, gy = _series(rows, f"val/drift_group/{g}")
        ax.plot(gx, gy, marker=".", linewidth=1.2, label=g)
    _epoch_axis(ax)
    ax.set_ylabel("semantic drift (fraction outside tolerance / mismatched)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    rx, ry = _series(rows, "val/rate_bits")
    handles, labels = ax.get_legend_handles_labels()
    if rx:
        ax2 = ax.twinx()
        (line,) = ax2.plot(rx, ry, color="tab:gray", linestyle=":", marker="s", markersize=3)
        ax2.set_ylabel("rate (bits per state)")
        handles.append(line)
        labels.append("bits/state (right)")
    ax.legend(handles, labels, fontsize=8, loc="upper right")
    ax.set_title("Semantic drift on the validation set (0 = meaning kept)")
    fig.tight_layout()
    _save(fig, path)


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
