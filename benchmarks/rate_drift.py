"""Rate against meaning, beside the classical floor: where does each bottleneck stand?

For each data set, trains every (bottleneck, level) on the same split and seed and reports the
**test split** (held-out agents): bits per state and semantic drift, beside the classical curve
computed on the same split by the same metric (per-column quantizer on the meaning grid with
order-0 tables fitted on the training agents, k = 1, 2, 4, 8, 16; and the per-agent delta code).
Then, per bottleneck:

- ``ratio@1%``: the fewest bits of its runs with test drift <= 1%, over the classical order-0
  bits at k = 1 (drift 0). Goal for entropy: <= 1.0.
- ``beats curve``: for every run with test drift in [1%, 20%], whether its bits are below the
  classical curve at that drift (the curve linearly interpolated between its k points).

Each (bottleneck, level) runs once per ``--contexts`` value: ``null`` (each state on its own)
and ``previous`` (``model.context=previous``: encoder and decoder also read the agent's previous
state on the grid). Per (bottleneck, context), on the test split's really coded bits (the
estimate where a run codes nothing):

- ``bits@1%`` / ``bits@5%``: the fewest bits of its runs with test drift <= 1% / <= 5%;
- ``/ lossless``: those over the lossless codec's bits at drift 0 on the same split
  (``compression=lossless model.context=history``, its really coded test bits; a reference row).
  Goal: bits@1% <= 0.6 x lossless.

Also the defaults rows: ``python train.py`` as shipped (synthetic) and ``data=sqlite`` on the
first real database, with every setting at its default; goal: test drift <= 5%.

    python benchmarks/rate_drift.py                              # synthetic + both shared dbs
    python benchmarks/rate_drift.py --data synthetic --levels 1 16 --bottlenecks entropy
    python benchmarks/rate_drift.py --data synthetic --contexts previous \
        --overrides data.num_states=5000 trainer.max_epochs=10    # smaller, faster runs

Prints a table and writes benchmarks/results/rate_drift.json.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402

from meaning_transform.api import load_config  # noqa: E402
from meaning_transform.training import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {
    "synthetic": [],
    "run1": ["data=sqlite", f"data.path={SHARED / 'agentfarm_run1.db'}"],
    "run3_moving": ["data=sqlite", f"data.path={SHARED / 'agentfarm_run3_moving.db'}"],
}
LEVELS = (1.0, 6.0, 8.0, 10.0, 14.0)
BOTTLENECKS = ("entropy", "vq", "none")
CONTEXTS = ("null", "previous")  # model.context values the lossy bottlenecks take
LOSSLESS = ["compression=lossless", "model.context=history"]  # the reference at drift 0
QUIET = [
    "logger=none",
    "callbacks.curve_plotter=null",
    "callbacks.progress_bar=null",
    "callbacks.periodic_checkpoint=null",
    "torch_threads=1",
]
GOAL_DRIFT, CURVE_RANGE = 0.01, (0.01, 0.20)
DRIFTS = (0.01, 0.05)  # bits@1%, bits@5%
GOAL_VS_LOSSLESS = 0.6  # bits@1% <= 0.6 x the lossless codec's bits on the same split
DEFAULT_POINT = ("entropy", 1.0)  # conf/train.yaml's compression and its level


def train(data: str, overrides: list[str], out: Path) -> dict[str, Any]:
    """One run through the same code path as ``python train.py``; its test numbers."""
    cfg = load_config([*DATASETS[data], *QUIET, *overrides, f"paths.output_dir={out}"])
    started = time.perf_counter()
    summary = run(cfg)
    test = summary["test"]
    return {
        "bits": test["test/rate_bits"],
        "drift": test["test/drift"],
        "coded_bits": (summary.get("test_coding") or {}).get("coded_bits_per_state"),
        "epochs": summary["epochs_run"],
        "wall_s": time.perf_counter() - started,
        "baselines": summary["baselines"],
    }


def classical_bits_at(drift: float, curve: list[dict[str, Any]]) -> float:
    """The classical quantizer's bits at ``drift``, linear between its k points."""
    points = sorted((p["drift"], p["bits_per_state"]) for p in curve)
    xs, ys = zip(*points, strict=True)
    return float(np.interp(drift, xs, ys))


def verdicts(runs: list[dict[str, Any]], curve: list[dict[str, Any]]) -> dict[str, Any]:
    """ratio@1% and whether every run with drift in CURVE_RANGE is below the classical curve."""
    floor = next(p["bits_per_state"] for p in curve if p["k"] == 1)
    good = [r["bits"] for r in runs if r["drift"] <= GOAL_DRIFT]
    ranged = [r for r in runs if CURVE_RANGE[0] <= r["drift"] <= CURVE_RANGE[1]]
    return {
        "ratio_at_1pct": min(good) / floor if good else None,
        "runs_in_1_20pct": len(ranged),
        "beats_curve_in_1_20pct": all(r["bits"] < r["classical_bits"] for r in ranged)
        if ranged
        else None,
    }


def coded_or_estimated(run: dict[str, Any]) -> float:
    """A run's really coded test bits per state, or its estimate where nothing was coded."""
    return run["bits"] if run["coded_bits"] is None else run["coded_bits"]


def bits_at(runs: list[dict[str, Any]], drift: float) -> float | None:
    """The fewest (coded) bits among ``runs`` with test drift <= ``drift``; None if none."""
    good = [coded_or_estimated(r) for r in runs if r["drift"] <= drift]
    return min(good) if good else None


def against_lossless(runs: list[dict[str, Any]], lossless_bits: float) -> dict[str, Any]:
    """bits@1% and bits@5%, each over the lossless codec's bits, and the 0.6x goal."""
    out: dict[str, Any] = {}
    for drift in DRIFTS:
        bits = bits_at(runs, drift)
        tag = f"{drift:.0%}".replace("%", "pct")
        out[f"bits_at_{tag}"] = bits
        out[f"ratio_to_lossless_at_{tag}"] = None if bits is None else bits / lossless_bits
    ratio = out["ratio_to_lossless_at_1pct"]
    out["meets_goal_vs_lossless"] = None if ratio is None else ratio <= GOAL_VS_LOSSLESS
    return out


def _ratio(bits: float | None, ratio: float | None) -> str:
    return "-" if bits is None else f"{bits:.2f} ({ratio:.3f}x)"


def bench(data: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Every (bottleneck, context, level) on one data set, its defaults row and the lossless
    reference."""
    print(f"\n== {data}", flush=True)
    extra = [f"seed={args.seed}", *args.overrides]
    default = train(data, extra, root / data / "default")
    baselines = default.pop("baselines")
    curve = baselines["quantizer"]
    delta = baselines["delta"][0]["bits_per_state"]
    lossless = train(data, [*LOSSLESS, *extra], root / data / "lossless")
    lossless.pop("baselines")
    lossless_bits = coded_or_estimated(lossless)
    result: dict[str, Any] = {
        "default": default,
        "classical": curve,
        "delta_bits": delta,
        "lossless": lossless,
    }
    print(
        "classical order-0: "
        + ", ".join(f"k={p['k']} {p['bits_per_state']:.2f} b @ {p['drift']:.3f}" for p in curve)
        + f"; per-agent delta {delta:.2f} b @ 0"
    )
    print(f"defaults: {default['bits']:.2f} bits/state at test drift {default['drift']:.4f}")
    print(
        f"lossless ({' '.join(LOSSLESS)}): {lossless_bits:.2f} coded bits/state at test drift "
        f"{lossless['drift']:.4f}"
    )
    print(
        f"{'bottleneck':<10} {'context':<8} {'level':>6} {'bits':>7} {'coded':>7} {'drift':>7} "
        f"{'classical':>9} {'epochs':>6}"
    )
    for bottleneck in args.bottlenecks:
        for context in args.contexts:
            runs = []
            for level in args.levels:
                if (bottleneck, level) == DEFAULT_POINT and context == "null":
                    r = dict(default)  # the same config as the defaults row
                else:
                    overrides = [
                        f"compression={bottleneck}",
                        f"compression.level={level}",
                        f"model.context={context}",
                    ]
                    out = root / data / f"{bottleneck}_{context}_{level}"
                    r = train(data, [*overrides, *extra], out)
                    r.pop("baselines")
                r["level"] = level
                r["classical_bits"] = classical_bits_at(r["drift"], curve)
                runs.append(r)
                coded = "-" if r["coded_bits"] is None else f"{r['coded_bits']:.2f}"
                print(
                    f"{bottleneck:<10} {context:<8} {level:>6g} {r['bits']:>7.2f} {coded:>7} "
                    f"{r['drift']:>7.4f} {r['classical_bits']:>9.2f} {r['epochs']:>6}",
                    flush=True,
                )
            v = {**verdicts(runs, curve), **against_lossless(runs, lossless_bits)}
            ratio = v["ratio_at_1pct"]
            print(
                f"{bottleneck:<10} {context:<8} ratio@1% {'-' if ratio is None else f'{ratio:.3f}'}"
                f"; below the classical curve at drift 1-20%: {v['beats_curve_in_1_20pct']} "
                f"({v['runs_in_1_20pct']} runs there); bits@1% "
                f"{_ratio(v['bits_at_1pct'], v['ratio_to_lossless_at_1pct'])}, bits@5% "
                f"{_ratio(v['bits_at_5pct'], v['ratio_to_lossless_at_5pct'])} of lossless "
                f"{lossless_bits:.2f} (goal <= {GOAL_VS_LOSSLESS}x at 1%: "
                f"{v['meets_goal_vs_lossless']})"
            )
            result.setdefault(bottleneck, {})[context] = {"runs": runs, **v}
    print_context_table(result, args)
    return result


def print_context_table(result: dict[str, Any], args: argparse.Namespace) -> None:
    """The summary: bits@1%, bits@5%, the lossless bits and the ratios, per (bottleneck,
    context)."""
    lossless = coded_or_estimated(result["lossless"])
    print(
        f"\n{'bottleneck':<10} {'context':<8} {'bits@1%':>8} {'bits@5%':>8} {'lossless':>8} "
        f"{'/lossless@1%':>12} {'/lossless@5%':>12}"
    )
    for bottleneck in args.bottlenecks:
        for context in args.contexts:
            v = result[bottleneck][context]
            cells = [
                "-" if v[k] is None else f"{v[k]:{spec}}"
                for k, spec in (
                    ("bits_at_1pct", ".2f"),
                    ("bits_at_5pct", ".2f"),
                    ("ratio_to_lossless_at_1pct", ".3f"),
                    ("ratio_to_lossless_at_5pct", ".3f"),
                )
            ]
            print(
                f"{bottleneck:<10} {context:<8} {cells[0]:>8} {cells[1]:>8} {lossless:>8.2f} "
                f"{cells[2]:>12} {cells[3]:>12}"
            )


def main() -> None:
    """Parse arguments, run, print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--levels", nargs="+", type=float, default=list(LEVELS))
    parser.add_argument("--bottlenecks", nargs="+", default=list(BOTTLENECKS))
    parser.add_argument("--contexts", nargs="+", default=list(CONTEXTS), choices=list(CONTEXTS))
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        help="Hydra overrides for every run, e.g. data.num_states=5000 trainer.max_epochs=10",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--name", default="rate_drift", help="results file name (no .json)")
    args = parser.parse_args()
    missing = [d for d in args.data if d != "synthetic" and not SHARED.exists()]
    if missing:
        sys.exit(f"error: {SHARED} is not present; run with --data synthetic")
    torch.set_num_threads(1)
    logging.disable(logging.INFO)  # the runs' per-epoch lines; the table is what this prints
    results: dict[str, Any] = {
        "machine": platform.platform(),
        "levels": args.levels,
        "contexts": args.contexts,
        "overrides": args.overrides,
        "seed": args.seed,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            results[data] = bench(data, args, Path(tmp))
    write_results(args.name, results)


if __name__ == "__main__":
    main()
