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

Also the defaults rows: ``python train.py`` as shipped (synthetic) and ``data=sqlite`` on the
first real database, with every setting at its default; goal: test drift <= 5%.

    python benchmarks/rate_drift.py                              # synthetic + both shared dbs
    python benchmarks/rate_drift.py --data synthetic --levels 1 16 --bottlenecks entropy

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
QUIET = [
    "logger=none",
    "callbacks.curve_plotter=null",
    "callbacks.progress_bar=null",
    "callbacks.periodic_checkpoint=null",
    "torch_threads=1",
]
GOAL_DRIFT, CURVE_RANGE = 0.01, (0.01, 0.20)
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


def bench(data: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Every (bottleneck, level) on one data set, plus its defaults row."""
    print(f"\n== {data}", flush=True)
    default = train(data, [f"seed={args.seed}"], root / data / "default")
    baselines = default.pop("baselines")
    curve = baselines["quantizer"]
    delta = baselines["delta"][0]["bits_per_state"]
    result: dict[str, Any] = {"default": default, "classical": curve, "delta_bits": delta}
    print(
        "classical order-0: "
        + ", ".join(f"k={p['k']} {p['bits_per_state']:.2f} b @ {p['drift']:.3f}" for p in curve)
        + f"; per-agent delta {delta:.2f} b @ 0"
    )
    print(f"defaults: {default['bits']:.2f} bits/state at test drift {default['drift']:.4f}")
    print(
        f"{'bottleneck':<10} {'level':>6} {'bits':>7} {'drift':>7} {'classical':>9} {'epochs':>6}"
    )
    for bottleneck in args.bottlenecks:
        runs = []
        for level in args.levels:
            if (bottleneck, level) == DEFAULT_POINT:  # the same config as the defaults row
                r = dict(default)
            else:
                overrides = [f"compression={bottleneck}", f"compression.level={level}"]
                r = train(
                    data, [*overrides, f"seed={args.seed}"], root / data / f"{bottleneck}_{level}"
                )
                r.pop("baselines")
            r["level"] = level
            r["classical_bits"] = classical_bits_at(r["drift"], curve)
            runs.append(r)
            print(
                f"{bottleneck:<10} {level:>6g} {r['bits']:>7.2f} {r['drift']:>7.4f} "
                f"{r['classical_bits']:>9.2f} {r['epochs']:>6}",
                flush=True,
            )
        v = verdicts(runs, curve)
        ratio = v["ratio_at_1pct"]
        print(
            f"{bottleneck:<10} ratio@1% {'-' if ratio is None else f'{ratio:.3f}'}; "
            f"below the classical curve at drift 1-20%: {v['beats_curve_in_1_20pct']} "
            f"({v['runs_in_1_20pct']} runs there)"
        )
        result[bottleneck] = {"runs": runs, **v}
    return result


def main() -> None:
    """Parse arguments, run, print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--levels", nargs="+", type=float, default=list(LEVELS))
    parser.add_argument("--bottlenecks", nargs="+", default=list(BOTTLENECKS))
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
        "seed": args.seed,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            results[data] = bench(data, args, Path(tmp))
    write_results(args.name, results)


if __name__ == "__main__":
    main()
