"""Training throughput: our Lightning path vs a plain PyTorch loop of the same model and loss.

Default model of ``conf/`` (MLP [256, 128, 64], latent 32, entropy bottleneck, all loss terms,
Adam) on ``--states`` synthetic states; prints a table and writes
benchmarks/results/train_throughput.json.

* lightning: ``trainer.fit`` of 1 epoch with the trainer, callbacks (progress bar, checkpoints,
  history, plots, early stopping) and CSV logger that ``training.run`` builds, on our
  DataModule's ``train_dataloader``. The timed window is the training epoch: from
  ``on_train_epoch_start`` to the end of the last training batch (``on_train_batch_end``),
  i.e. every per-batch cost (data loader, hooks, callbacks, progress bar, optimizer, logging).
  The whole ``fit`` (trainer setup, one validation pass, 3 checkpoints, CSV, 2 PNG plots) is
  reported too, as ``lightning_fit``.
* plain: the same MeaningModule's ``_step`` (forward + loss) on index-sliced batches of the same
  training tensor in a fresh permutation, ``zero_grad`` / ``backward`` / ``step`` of the same
  Adam; no Lightning. Timed from the permutation to the last optimizer step.

The machine is shared: each configuration is run ``--repeats`` times, plain and lightning
interleaved (A B A B ...) in this one process, and the best of each is kept.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from _results import write_results
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf, open_dict

from meaning_transform.api import load_config
from meaning_transform.module import MeaningModule
from meaning_transform.training import build_trainer, prepare

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.8
RESEARCH_STATES_PER_S = 24_000  # the research code this replaces, batch 64, these machines
MODELS: dict[str, Any] = {}  # the model and compression configs measured


class EpochTimer(Callback):
    """Wall time of the training epoch: epoch start to the end of its last training batch."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock."""
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """Stop it at the last batch (before validation)."""
        self.end = time.perf_counter()


def lightning_epoch(
    cfg: Any, datamodule: Any, module: MeaningModule, out_dir: Path, limit: int | None = None
) -> tuple[float, float]:
    """(training epoch seconds, whole fit seconds) of 1 epoch as ``training.run`` trains it."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.trainer.max_epochs = 1
        if limit is not None:  # warm-up only
            cfg.trainer.limit_train_batches = limit
            cfg.trainer.limit_val_batches = 1
    timer = EpochTimer()
    trainer, _ = build_trainer(cfg, extra=[timer])
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return timer.end - timer.start, time.perf_counter() - start


def plain_epoch(module: MeaningModule, x: torch.Tensor, batch_size: int, limit: int | None = None):
    """Seconds for one epoch of a hand-written loop over index-sliced batches of ``x``."""
    optimizer = module.configure_optimizers()
    if isinstance(optimizer, dict):
        optimizer = optimizer["optimizer"]
    module.train()
    n = x.shape[0]
    batches = -(-n // batch_size)
    start = time.perf_counter()
    perm = torch.randperm(n)
    for i in range(batches if limit is None else limit):
        batch = x[perm[i * batch_size : (i + 1) * batch_size]]
        total = module._step(batch, i / batches)[0]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    return time.perf_counter() - start


def bench_batch(args: argparse.Namespace, batch_size: int, tmp: Path) -> list[dict[str, Any]]:
    """Best-of-N throughput of both paths for each thread count, interleaved."""
    overrides = [
        f"data.num_states={args.states}",
        f"data.batch_size={batch_size}",
        f"paths.output_dir={tmp / 'prepare'}",
        "test=false",
    ]
    cfg, datamodule, module0, _ = prepare(load_config(overrides))
    x = datamodule.train_x
    n = x.shape[0]
    runs: dict[tuple[int, str], list[float]] = {}
    fits: dict[int, list[float]] = {}
    for threads in args.threads:  # warm-up: allocator, lazy imports, first-fit setup
        torch.set_num_threads(threads)
        plain_epoch(copy.deepcopy(module0), x, batch_size, limit=20)
        warm = tmp / f"warmup_b{batch_size}_t{threads}"
        lightning_epoch(cfg, datamodule, copy.deepcopy(module0), warm, limit=20)
    for rep in range(args.repeats):
        for threads in args.threads:
            torch.set_num_threads(threads)
            p = plain_epoch(copy.deepcopy(module0), x, batch_size)
            e, f = lightning_epoch(
                cfg, datamodule, copy.deepcopy(module0), tmp / f"b{batch_size}_t{threads}_{rep}"
            )
            runs.setdefault((threads, "plain"), []).append(p)
            runs.setdefault((threads, "lightning"), []).append(e)
            fits.setdefault(threads, []).append(f)
            print(
                f"  batch {batch_size} threads {threads} rep {rep}: plain {n / p:,.0f}/s, "
                f"lightning {n / e:,.0f}/s (fit {f:.1f}s), ratio {p / e:.2f}",
                flush=True,
            )
    MODELS.setdefault("model", OmegaConf.to_container(cfg.model, resolve=True))
    MODELS.setdefault("compression", OmegaConf.to_container(cfg.compression, resolve=True))
    rows = []
    for threads in args.threads:
        p, e, f = min(runs[threads, "plain"]), min(runs[threads, "lightning"]), min(fits[threads])
        rows.append(
            {
                "batch_size": batch_size,
                "threads": threads,
                "train_states": n,
                "plain_states_per_s": n / p,
                "lightning_states_per_s": n / e,
                "ratio": p / e,
                "lightning_fit_s": f,
                "lightning_fit_states_per_s": n / f,
                "plain_s_all": runs[threads, "plain"],
                "lightning_s_all": runs[threads, "lightning"],
                "lightning_fit_s_all": fits[threads],
            }
        )
    return rows


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--states", type=int, default=100_000, help="synthetic states (all splits)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1],
        help="torch intra-op threads to compare, e.g. 1 2 (2 can be 5x slower on a busy 2-core box)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    threads_before = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in args.batch_sizes:
            rows.extend(bench_batch(args, batch_size, Path(tmp)))
    torch.set_num_threads(threads_before)
    results = {
        "states": args.states,
        "repeats": args.repeats,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "target_ratio": TARGET_RATIO,
        "research_code_states_per_s_batch64": RESEARCH_STATES_PER_S,
        **MODELS,
        "rows": rows,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print_table(results)
    write_results("train_throughput", results)


def print_table(r: dict[str, Any]) -> None:
    """The results as an aligned text table."""
    print(
        f"\ntraining throughput, {r['states']:,} states, best of {r['repeats']} "
        f"({r['machine']}, torch {r['torch']}, lightning {r['lightning']})"
    )
    print(
        f"{'batch':>5} {'threads':>7} {'plain states/s':>15} {'lightning states/s':>19} "
        f"{'ratio':>6} {'target':>7} {'fit s':>6}"
    )
    for row in r["rows"]:
        ok = "ok" if row["ratio"] >= r["target_ratio"] else "MISS"
        print(
            f"{row['batch_size']:>5} {row['threads']:>7} {row['plain_states_per_s']:>15,.0f} "
            f"{row['lightning_states_per_s']:>19,.0f} {row['ratio']:>6.2f} "
            f"{ok:>7} {row['lightning_fit_s']:>6.1f}"
        )
    print(f"peak RSS {r['peak_rss_mib']:,.0f} MiB")
    print(
        f"(research code: ~{r['research_code_states_per_s_batch64']:,} states/s at batch 64; "
        "lightning = training-epoch window, fit s = whole trainer.fit incl. validation)"
    )


if __name__ == "__main__":
    main()
