"""What ``bottleneck_aux`` measures in a default run, and why it grows.

``bottleneck_aux`` is the entropy models' quantile loss (Balle et al. 2018, as in CompressAI):
per coded channel, ``|logit CDF(q_lower) + t| + |logit CDF(q_median)| + |logit CDF(q_upper) - t|``
with ``t = log(2 / tail_mass - 1)`` (21.4 for tail_mass 1e-9), summed over channels. Its gradient
moves only the quantiles, which bound the coding support (``EntropyBottleneck._support``) and
centre the latent's rounding (the median). This script trains the default ``python train.py``
config and after every epoch records, for each entropy model (the 32-channel latent and the grid
path's smooth channels; the grid's table channels have no quantile loss):

- ``aux``: its part of the loss;
- ``lag``: mean distance from each tail quantile to where the CDF reaches the 1e-9 tails
  (found by bisection), in the channel's units;
- ``tails``: mean distance between those two points (the width of the learned density);
- ``support``: coding support symbols per channel now, and with the quantiles where they should be;
- ``bits``: the channel group's share of val bits per state.

    python benchmarks/bottleneck_aux.py                 # the default run (25 epochs, ~1 min)
    python benchmarks/bottleneck_aux.py --epochs 5
    python benchmarks/bottleneck_aux.py --quantile-lr-scale 10   # the experiment: quantiles
                                        # learning at 10x the lr, as fast as the densities

Prints a table per model and writes benchmarks/results/bottleneck_aux.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402

from meaning_transform.api import load_config  # noqa: E402
from meaning_transform.assemble import build_trainer, prepare  # noqa: E402
from meaning_transform.models.bottlenecks.entropy import EntropyBottleneck  # noqa: E402

QUIET = ["logger=none", "callbacks.curve_plotter=null", "callbacks.progress_bar=null"]


@torch.no_grad()
def tail_points(model: EntropyBottleneck) -> torch.Tensor:
    """Per channel, where the CDF's logit is -t, 0 and +t (bisection), [D, 3]."""
    targets = model.quantile_targets
    d = model.latent_dim
    lo = torch.full((d, 1, 3), -1e4)
    hi = torch.full((d, 1, 3), 1e4)
    for _ in range(80):
        mid = (lo + hi) / 2
        below = model._logits_cumulative(mid) < targets
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return ((lo + hi) / 2)[:, 0, :]


@torch.no_grad()
def describe(model: EntropyBottleneck) -> dict[str, float]:
    """aux, quantile lag, density width and coding support of one entropy model."""
    q = model.quantiles[:, 0, :].detach()
    ideal = tail_points(model)
    logits = model._logits_cumulative(model.quantiles.detach())[:, 0, :]
    per_quantile = (logits - model.quantile_targets).abs()
    lowest, highest = model._support()
    saved = model.quantiles.detach().clone()
    model.quantiles.copy_(ideal[:, None, :])
    ideal_lowest, ideal_highest = model._support()
    model.quantiles.copy_(saved)
    return {
        "aux": float(per_quantile.sum()),
        "aux_tails": float(per_quantile[:, [0, 2]].sum()),
        "aux_median": float(per_quantile[:, 1].sum()),
        "logit_at_lower": float(logits[:, 0].mean()),
        "logit_at_upper": float(logits[:, 2].mean()),
        "quantile_halfwidth": float(((q[:, 2] - q[:, 0]) / 2).mean()),
        "tails_halfwidth": float(((ideal[:, 2] - ideal[:, 0]) / 2).mean()),
        "lag": float(((q[:, [0, 2]] - ideal[:, [0, 2]]).abs()).mean()),
        "support": float((highest - lowest + 1).mean()),
        "support_if_at_tails": float((ideal_highest - ideal_lowest + 1).mean()),
        "channels": model.latent_dim,
    }


class Recorder(L.Callback):
    """After each validation, every entropy model's ``describe`` and the val bits."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "val/bottleneck_aux": float(m["val/bottleneck_aux"]),
            "bits_latent": float(m.get("val/rate_bits_latent", float("nan"))),
            "bits_grid": float(m.get("val/rate_bits_grid", float("nan"))),
        }
        row["latent"] = describe(pl_module.bottleneck)
        if pl_module.grid is not None and pl_module.grid.smooth is not None:
            row["grid_smooth"] = describe(pl_module.grid.smooth)
        self.rows.append(row)


def quantiles_faster(module: Any, scale: float) -> None:
    """The experiment: the module's optimizer gives every quantile ``scale`` x the lr (a second
    parameter group; the shipped code has one group at one lr)."""
    build = module.configure_optimizers

    def configure() -> Any:
        built = build()
        optimizer = built["optimizer"] if isinstance(built, dict) else built
        quantiles = {id(m.quantiles) for m in module.modules() if isinstance(m, EntropyBottleneck)}
        group = optimizer.param_groups[0]
        rest = [p for p in group["params"] if id(p) not in quantiles]
        fast = [p for p in group["params"] if id(p) in quantiles]
        group["params"] = rest
        optimizer.add_param_group({"params": fast, "lr": group["lr"] * scale})
        return built

    module.configure_optimizers = configure


def train(
    epochs: int | None, folder: Path, quantile_lr_scale: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    overrides = [*QUIET, f"paths.output_dir={folder}"]
    if epochs:
        overrides.append(f"trainer.max_epochs={epochs}")
    cfg, datamodule, module, _ = prepare(load_config(overrides))
    if quantile_lr_scale != 1:
        quantiles_faster(module, quantile_lr_scale)
    recorder = Recorder()
    trainer, _ = build_trainer(cfg, extra=[recorder])
    trainer.fit(module, datamodule=datamodule)
    test = trainer.test(module, datamodule=datamodule, ckpt_path="best", verbose=False)[0]
    coded = module.code(datamodule.rows("test"))
    return recorder.rows, {
        "lr": float(cfg.optimizer.lr),
        "quantile_lr_scale": quantile_lr_scale,
        "steps_per_epoch": trainer.num_training_batches,
        "test_rate_bits": float(test["test/rate_bits"]),
        "test_drift": float(test["test/drift"]),
        "test_coded_bits": coded["coded_bits_per_state"],
    }


def print_table(rows: list[dict[str, Any]], part: str) -> None:
    print(f"\n{part}: {rows[0][part]['channels']} channels")
    head = (
        f"{'epoch':>5} {'step':>5} {'aux':>8} {'tails':>7} {'median':>6} {'logit lo/hi':>13} "
        f"{'q half':>7} {'tails half':>10} {'lag':>6} {'support':>7} {'at tails':>8} {'bits':>6}"
    )
    print(head)
    print("-" * len(head))
    bits_key = "bits_latent" if part == "latent" else "bits_grid"
    for r in rows:
        p = r[part]
        logits = f"{p['logit_at_lower']:.1f}/{p['logit_at_upper']:.1f}"
        print(
            f"{r['epoch']:>5} {r['step']:>5} {p['aux']:>8.1f} {p['aux_tails']:>7.1f} "
            f"{p['aux_median']:>6.2f} {logits:>13} {p['quantile_halfwidth']:>7.3f} "
            f"{p['tails_halfwidth']:>10.3f} {p['lag']:>6.3f} {p['support']:>7.2f} "
            f"{p['support_if_at_tails']:>8.2f} {r[bits_key]:>6.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--quantile-lr-scale", type=float, default=1.0)
    args = parser.parse_args()
    logging.getLogger("meaning_transform").setLevel(logging.WARNING)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bottleneck_aux_") as tmp:
        rows, info = train(args.epochs, Path(tmp), args.quantile_lr_scale)
    print(
        f"default config, {len(rows)} epochs, lr {info['lr']} (quantiles x"
        f"{info['quantile_lr_scale']:g}), {info['steps_per_epoch']} steps per epoch "
        f"({time.perf_counter() - started:.0f} s); best checkpoint on the test split: "
        f"{info['test_rate_bits']:.2f} bits/state estimated, {info['test_coded_bits']:.2f} coded, "
        f"drift {info['test_drift']:.4f}"
    )
    print("aux = tails + median parts; logit lo/hi: mean CDF logit at the lower/upper quantile")
    print("(target -/+21.4); q half / tails half: mean half-width of the quantiles / of the")
    print("density's 1e-9 tails; lag: mean |quantile - tail point|; support: symbols per channel")
    print("now / if the quantiles were at the tails; bits: val bits per state of these channels")
    for part in ("latent", "grid_smooth"):
        if part in rows[0]:
            print_table(rows, part)
    name = "bottleneck_aux" + (
        f"_q{args.quantile_lr_scale:g}" if args.quantile_lr_scale != 1 else ""
    )
    write_results(name, {"config": "default", **info, "epochs": rows})


if __name__ == "__main__":
    main()
