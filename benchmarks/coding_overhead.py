"""Where do the coded bits differ from the estimate? Per part, per cause, across levels.

Trains quick models (``trainer.max_epochs``, default 8) at several ``compression.level`` values
on synthetic data and on the first shared database, with and without the grid path, then codes
the **test split** with ``MeaningModule.code`` and breaks ``coded - estimated`` (bits per state)
down per coded part (latent, grid smooth channels, grid table channels) into:

- ``table``: in-support symbols priced by the float coding table (pmf over the support plus the
  overflow bin, normalized) instead of the likelihood the estimate uses;
- ``escape``: out-of-support values, coded as the overflow symbol plus side/length/residual
  bits, instead of their (floored) likelihood;
- ``fixed_point``: ``constriction``'s 24-bit quantization of the table's probabilities (computed
  here the way its leaky ``Categorical(perfect=False)`` quantizes: every symbol keeps one unit);
- ``stream``: what is left, the stream's own cost (its end, whole bytes).

Per-part rows code each part as its own stream; the ``total`` row is ``MeaningModule.code``.

    python benchmarks/coding_overhead.py                         # synthetic + run1, levels 1..14
    python benchmarks/coding_overhead.py --data synthetic --levels 1 8 --epochs 2

Prints a table and writes benchmarks/results/coding_overhead.json.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402
from rate_drift import DATASETS, QUIET, SHARED  # noqa: E402

from meaning_transform.api import load_config  # noqa: E402
from meaning_transform.models.bottlenecks.coding import escape_bits  # noqa: E402
from meaning_transform.models.bottlenecks.entropy import EntropyBottleneck  # noqa: E402
from meaning_transform.training import prepare, run  # noqa: E402

LEVELS = (1.0, 4.0, 8.0, 10.0, 14.0)
VARIANTS = {"grid": [], "nogrid": ["model.grid_path.enabled=false"]}
PRECISION = 24  # constriction's AnsCoder probability precision (bits)
CAUSES = ("table", "escape", "fixed_point", "stream")


def fixed_point_pmf(pmf: np.ndarray) -> np.ndarray:
    """The probabilities a leaky 24-bit quantization gives ``pmf`` (each symbol >= 2**-24)."""
    n = len(pmf)
    cdf = np.concatenate([[0.0], np.cumsum(pmf / pmf.sum())])
    scaled = np.floor(cdf * ((1 << PRECISION) - n)).astype(np.int64) + np.arange(n + 1)
    scaled[-1] = 1 << PRECISION
    return np.diff(scaled) / float(1 << PRECISION)


def breakdown(model: EntropyBottleneck, z: torch.Tensor) -> dict[str, float]:
    """Estimated and coded bits of ``z`` under ``model`` (one stream), and the causes, in bits."""
    report = model.coding_report(z)
    with torch.no_grad():
        lik = model.likelihood(model.quantize(z)).double().cpu().numpy()  # what the estimate reads
    est = -np.log2(lik)
    tables = model.coding_tables()
    index = model.offsets(z) - tables.lowest
    parts = dict.fromkeys(CAUSES, 0.0)
    for c, (pmf, size) in enumerate(zip(tables.pmfs, tables.sizes, strict=True)):
        col = index[:, c]
        escaped = (col < 0) | (col >= size)
        symbols = np.where(escaped, size, col)
        float_bits = -np.log2(pmf[symbols] / pmf.sum())
        fixed_bits = -np.log2(fixed_point_pmf(pmf)[symbols])
        payload = np.zeros(len(col))
        if escaped.any():
            payload[escaped] = escape_bits(col[escaped], size)
        parts["table"] += float((float_bits - est[:, c])[~escaped].sum())
        parts["escape"] += float((float_bits + payload - est[:, c])[escaped].sum())
        parts["fixed_point"] += float((fixed_bits - float_bits).sum())
    n = report.num_states
    estimated, coded = report.estimated_bits_per_state * n, report.coded_bits_per_state * n
    parts["stream"] = coded - estimated - sum(parts.values())
    return {"estimated": estimated, "coded": coded, **parts}


def coded_parts(module: Any, x: torch.Tensor) -> dict[str, tuple[EntropyBottleneck, torch.Tensor]]:
    """The coded parts of ``module`` on data tensor ``x``: (entropy model, its values)."""
    module.eval()
    parts = {}
    with torch.no_grad():
        if isinstance(module.bottleneck, EntropyBottleneck):
            parts["latent"] = (
                module.bottleneck,
                module.codec.encoder(module.layout.model_input(x)).mu,
            )
        if module.grid is not None:
            for _, model, values in module.grid._parts(x):
                parts["grid_" + ("smooth" if model is module.grid.smooth else "table")] = (
                    model,
                    values,
                )
    return parts


def measure(data: str, variant: str, level: float, epochs: int, out: Path) -> dict[str, Any]:
    """Train one model (or reuse ``out``), code its test split; bits per state per part/cause."""
    overrides = [*DATASETS[data], *QUIET, *VARIANTS[variant], f"compression.level={level:g}"]
    overrides += [f"trainer.max_epochs={epochs}", f"paths.output_dir={out}"]
    if not (out / "checkpoints" / "best.ckpt").is_file():
        run(load_config(overrides))
    cfg = load_config([*overrides, f"init_from={out / 'checkpoints' / 'best.ckpt'}"])
    _, datamodule, module, _ = prepare(cfg)
    datamodule.setup("test")
    x = datamodule.test_x
    n = x.shape[0]
    parts = coded_parts(module, x)
    rows = {name: breakdown(m, v) for name, (m, v) in parts.items()}
    total = {k: sum(r[k] for r in rows.values()) for k in ("estimated", "coded", *CAUSES)}
    # The batch as MeaningModule.code codes it (all parts in one stream, where they share one)
    total["coded"] = module.code(x)["coded_bits_per_state"] * n
    total["stream"] += total["coded"] - sum(r["coded"] for r in rows.values())
    per_state = {
        name: {k: v / n for k, v in r.items()} for name, r in {**rows, "total": total}.items()
    }
    return {"data": data, "variant": variant, "level": level, "num_states": n, "parts": per_state}


def print_row(r: dict[str, Any]) -> None:
    """One line per part: estimated and coded bits per state, the gap and its causes."""
    for name, p in r["parts"].items():
        gap = p["coded"] / p["estimated"] - 1 if p["estimated"] else float("nan")
        print(
            f"{r['data']:<10} {r['variant']:<6} {r['level']:>5g} {name:<12} "
            f"{p['estimated']:>8.3f} {p['coded']:>8.3f} {100 * gap:>+7.2f}% "
            + " ".join(f"{p[c]:>+9.4f}" for c in CAUSES),
            flush=True,
        )


def main() -> None:
    """Parse arguments, run, print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["synthetic", "run1"], choices=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--levels", nargs="+", type=float, default=list(LEVELS))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None, help="keep (and reuse) the runs")
    parser.add_argument("--name", default="coding_overhead", help="results file name (no .json)")
    args = parser.parse_args()
    if any(d != "synthetic" for d in args.data) and not SHARED.exists():
        sys.exit(f"error: {SHARED} is not present; run with --data synthetic")
    torch.set_num_threads(1)
    logging.disable(logging.INFO)
    print(
        f"{'data':<10} {'model':<6} {'level':>5} {'part':<12} {'estim.':>8} {'coded':>8} "
        f"{'gap':>8} " + " ".join(f"{c:>9}" for c in CAUSES) + "   (bits per state)"
    )
    results: dict[str, Any] = {"machine": platform.platform(), "epochs": args.epochs, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        for data in args.data:
            for variant in args.variants:
                for level in args.levels:
                    out = root / f"{data}_{variant}" / f"L{level:g}"
                    r = measure(data, variant, level, args.epochs, out)
                    print_row(r)
                    results["runs"].append(r)
    worst = max(
        abs(r["parts"]["total"]["coded"] / r["parts"]["total"]["estimated"] - 1)
        for r in results["runs"]
    )
    print(f"\nworst |coded / estimated - 1| over runs: {100 * worst:.2f}%")
    results["worst_relative_gap"] = worst
    write_results(args.name, results)


if __name__ == "__main__":
    main()
