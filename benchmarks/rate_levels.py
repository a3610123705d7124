"""Rate vs compression level: does a higher ``compression.level`` really buy fewer bits?

Trains every (bottleneck, level) pair on the same synthetic data and the same seed, and reports
the validation bits per state of the last epoch, the drift and the validation loss. For the
entropy bottleneck it also ANS-codes the validation latents for real
(``meaning_transform.models.bottlenecks.coding.code_latents``) and reports the coded bits per
state beside the estimate. Prints a table and writes benchmarks/results/rate_levels.json.

    python benchmarks/rate_levels.py                      # 5,000 states, 100 agents, 6 epochs
    python benchmarks/rate_levels.py --states 2000 --epochs 3 --bottlenecks entropy

What ``level`` means per bottleneck: entropy and none scale the rate term of the loss
(``loss.rate_weight * level * bits``); vq sets the codebook size ``K = num_embeddings / level``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from meaning_transform.api import load_config
from meaning_transform.models.bottlenecks.coding import code_latents
from meaning_transform.module import MeaningModule
from meaning_transform.training import prepare, run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "rate_levels.json"
LEVELS = (0.5, 1.0, 2.0, 5.0)
QUIET = [
    "logger=none",
    "callbacks.curve_plotter=null",
    "callbacks.progress_bar=null",
    "callbacks.early_stopping=null",  # every level trains the same number of epochs
    "callbacks.periodic_checkpoint=null",
    "test=false",
]


def train_one(bottleneck: str, level: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train one (bottleneck, level) and measure its last epoch."""
    overrides = [
        f"compression={bottleneck}",
        f"compression.level={level}",
        f"data.num_states={args.states}",
        f"data.num_agents={args.agents or 'null'}",
        f"trainer.max_epochs={args.epochs}",
        f"seed={args.seed}",
        *QUIET,
        *args.override,
        f"paths.output_dir={out}",
    ]
    if bottleneck == "vq":
        overrides.append(f"compression.num_embeddings={args.num_embeddings}")
    cfg = load_config(overrides)
    start = time.perf_counter()
    summary = run(cfg)
    seconds = time.perf_counter() - start
    last = summary["history"][-1]
    row: dict[str, Any] = {
        "bottleneck": bottleneck,
        "level": level,
        "bits_per_state": last["val/rate_bits"],
        "drift": last["val/drift"],
        "val_loss": last["val/loss"],
        "drift_groups": {
            k.removeprefix("val/drift_group/"): v
            for k, v in last.items()
            if k.startswith("val/drift_group/")
        },
        "epochs": int(last["epoch"]),
        "train_seconds": round(seconds, 2),
    }
    if bottleneck == "vq":
        row["codebook_size"] = round(args.num_embeddings / level)
        row["codes_used"] = last.get("val/codes_used")
        row["log2_K"] = last.get("val/fixed_rate_bits")
    if bottleneck == "entropy":
        row.update(coded_bits(cfg, summary["last_model_path"]))
    return row


@torch.no_grad()
def coded_bits(cfg: Any, ckpt: str) -> dict[str, Any]:
    """ANS-code the validation latents of the last checkpoint; estimated vs coded bits."""
    module = MeaningModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    _, datamodule, _, _ = prepare(cfg)  # same data seed and split as the trained run
    x = datamodule.val_x
    z = module.codec.encoder(module.schema.model_input(x)).z
    report = code_latents(module.bottleneck, z)
    gap = report.coded_bits_per_state - report.estimated_bits_per_state
    return {
        "estimated_bits_per_state": report.estimated_bits_per_state,
        "coded_bits_per_state": report.coded_bits_per_state,
        "coded_minus_estimated": gap,
        "coded_bytes": report.num_bytes,
        "coded_states": report.num_states,
        "roundtrip_exact": report.exact,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per (bottleneck, level)."""
    head = (
        f"{'bottleneck':<10} {'level':>5} {'bits/state':>10} {'drift':>7} {'val loss':>9} "
        f"{'coded bits':>10} {'gap':>7} {'extra':<24}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        coded = r.get("coded_bits_per_state")
        gap = r.get("coded_minus_estimated")
        extra = ""
        if r["bottleneck"] == "vq":
            extra = f"K={r['codebook_size']} used={r['codes_used']:.0f}"
        print(
            f"{r['bottleneck']:<10} {r['level']:>5g} {r['bits_per_state']:>10.2f} "
            f"{r['drift']:>7.4f} {r['val_loss']:>9.4f} "
            f"{'' if coded is None else f'{coded:.2f}':>10} "
            f"{'' if gap is None else f'{gap:+.2f}':>7} {extra:<24}"
        )


def monotone(rows: list[dict[str, Any]], bottleneck: str) -> bool | None:
    """Strictly fewer bits at every higher level (None when the bottleneck was not run)."""
    bits = [r["bits_per_state"] for r in rows if r["bottleneck"] == bottleneck]
    if not bits:
        return None
    return all(b > a for a, b in zip(bits[1:], bits[:-1], strict=True))


def main(argv: list[str] | None = None) -> int:
    """Run the sweep, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--states", type=int, default=5000, help="synthetic states")
    parser.add_argument(
        "--agents",
        type=int,
        default=100,
        help="synthetic agents; the split is by agent, and the data config's default (~1 agent "
        "per 250 states) leaves only ~4 agents in a 5,000-state validation split: too few to "
        "measure code usage or drift (0 = the data config's default)",
    )
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run")
    parser.add_argument("--levels", type=float, nargs="+", default=list(LEVELS))
    parser.add_argument(
        "--bottlenecks", nargs="+", default=["entropy", "vq", "none"], help="which to run"
    )
    parser.add_argument("--num-embeddings", type=int, default=64, help="vq codebook at level 1")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        help="extra Hydra overrides, e.g. loss.rate_weight=0.01",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory(prefix="rate_levels_") as tmp:
        for bottleneck in args.bottlenecks:
            for level in sorted(args.levels):
                out = Path(tmp) / f"{bottleneck}_{level:g}"
                rows.append(train_one(bottleneck, level, args, out))
                r = rows[-1]
                print(
                    f"[{bottleneck} level {level:g}] {r['bits_per_state']:.2f} bits/state, "
                    f"drift {r['drift']:.4f} ({r['train_seconds']:.1f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    print_table(rows)
    checks = {b: monotone(rows, b) for b in args.bottlenecks}
    print("strictly decreasing bits with level:", checks)
    payload = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__},
        "strictly_decreasing_bits": checks,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
