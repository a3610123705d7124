"""Training throughput: our Lightning path vs a plain PyTorch loop, and both vs the seed's VAE.

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

* seed VAE (the reference): a hand-written loop of a plain VAE of the seed's size
  (15 -> 256 -> 128 -> 64 -> 32, MSE + KL, Adam) on as many random states, same batch size.

* ``--compile``: plain and lightning again with the step compiled (``compile=true``,
  meaning_transform/compile_step.py), compiled in the warm-up so that their rates exclude
  compiling; the compile seconds are the first compiled step's in a fresh process
  (``_first_compile.py``), with an empty inductor cache (cold) and then the cache it left (warm).

The machine is shared: each configuration is run ``--repeats`` times, all loops interleaved
(A B C A B C ...) in this one process, and the best of each is kept.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
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
from meaning_transform.assemble import build_trainer, prepare
from meaning_transform.compile_step import compile_step
from meaning_transform.console import quiet_libraries
from meaning_transform.module import MeaningModule

ROOT = Path(__file__).resolve().parents[1]
TARGET_LIGHTNING_VS_VAE = 0.9  # issue 13: Lightning path >= 0.9x the seed-size VAE loop
TARGET_PLAIN_VS_VAE = 1.0  # and the project module's own plain loop >= 1.0x
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


class SeedVAE(torch.nn.Module):
    """The reference: a plain VAE of the seed's size, 15 -> 256 -> 128 -> 64 -> 32 and back."""

    def __init__(
        self, input_dim: int = 15, hidden: tuple[int, ...] = (256, 128, 64), latent: int = 32
    ):
        super().__init__()
        dims = [input_dim, *hidden]
        enc = [
            m
            for a, b in zip(dims, dims[1:], strict=False)
            for m in (torch.nn.Linear(a, b), torch.nn.ReLU())
        ]
        self.encoder = torch.nn.Sequential(*enc, torch.nn.Linear(dims[-1], 2 * latent))
        back = [latent, *reversed(hidden)]
        dec = [
            m
            for a, b in zip(back, back[1:], strict=False)
            for m in (torch.nn.Linear(a, b), torch.nn.ReLU())
        ]
        self.decoder = torch.nn.Sequential(*dec, torch.nn.Linear(back[-1], input_dim))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """MSE reconstruction + KL(q(z|x) || N(0, I)), a sampled latent."""
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()
        kl = -0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(1).mean()
        return torch.nn.functional.mse_loss(self.decoder(z), x) + kl


def vae_epoch(n: int, batch_size: int, limit: int | None = None) -> float:
    """Seconds for one epoch of the seed-size VAE, hand-written loop, Adam, ``n`` random states."""
    model = SeedVAE()
    x = torch.randn(n, 15)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = -(-n // batch_size)
    start = time.perf_counter()
    perm = torch.randperm(n)
    for i in range(batches if limit is None else limit):
        loss = model.loss(x[perm[i * batch_size : (i + 1) * batch_size]])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def inductor_cache(tmp: Path, batch_size: int) -> Path:
    """The inductor cache folder of one batch size's compiled runs."""
    return tmp / f"inductor_cache_b{batch_size}"


def compile_seconds(args: argparse.Namespace, batch_size: int, tmp: Path) -> dict[str, float]:
    """The first compiled step's seconds in a fresh process, with an empty inductor cache
    (cold), then again with the cache that run left (warm)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache(tmp, batch_size))}
    seconds = {}
    for kind in ("cold", "warm"):
        out = tmp / f"compile_{kind}_b{batch_size}.json"
        script = Path(__file__).with_name("_first_compile.py")
        argv = [str(args.states), str(batch_size), str(out), *args.overrides]
        subprocess.run([sys.executable, str(script), *argv], env=env, check=True)
        seconds[kind] = json.loads(out.read_text())["first_step_s"]
        print(f"  batch {batch_size}: first compiled step {seconds[kind]:.1f} s ({kind} cache)")
    return seconds


def bench_batch(args: argparse.Namespace, batch_size: int, tmp: Path) -> list[dict[str, Any]]:
    """Best-of-N throughput of every loop for each thread count, interleaved."""
    overrides = [
        f"data.num_states={args.states}",
        f"data.batch_size={batch_size}",
        f"paths.output_dir={tmp / 'prepare'}",
        "test=false",
        *args.overrides,
    ]
    cfg, datamodule, module0, _ = prepare(load_config(overrides))
    x = datamodule.train_x
    n = x.shape[0]

    def copy_of(compiled: bool) -> MeaningModule:
        module = copy.deepcopy(module0)
        if compiled:
            compile_step(module)
        return module

    def loops(limit: int | None = None) -> dict[str, Any]:
        """Each loop: a function of the run's folder that returns (epoch s, fit s or None)."""
        found = {
            "vae": lambda _: (vae_epoch(n, batch_size, limit), None),
            "plain": lambda _: (plain_epoch(copy_of(False), x, batch_size, limit), None),
            "lightning": lambda out: lightning_epoch(cfg, datamodule, copy_of(False), out, limit),
        }
        if args.compile:  # compiled in the warm-up (limit): its runs exclude compiling
            found["plain_compiled"] = lambda _: (
                plain_epoch(copy_of(True), x, batch_size, limit),
                None,
            )
            found["lightning_compiled"] = lambda out: lightning_epoch(
                cfg, datamodule, copy_of(True), out, limit
            )
        return found

    compiling = {}
    if args.compile:
        compiling = compile_seconds(args, batch_size, tmp)
        # this process compiles in the warm-up (not timed): from the cache those runs left
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache(tmp, batch_size))
    runs: dict[tuple[int, str], list[float]] = {}
    fits: dict[tuple[int, str], list[float]] = {}
    for threads in args.threads:  # warm-up: allocator, lazy imports, first-fit setup, compiling
        torch.set_num_threads(threads)
        for name, loop in loops(limit=20).items():
            loop(tmp / f"warmup_{name}_b{batch_size}_t{threads}")
    for rep in range(args.repeats):
        for threads in args.threads:
            torch.set_num_threads(threads)
            line = []
            for name, loop in loops().items():
                epoch_s, fit_s = loop(tmp / f"{name}_b{batch_size}_t{threads}_{rep}")
                runs.setdefault((threads, name), []).append(epoch_s)
                if fit_s is not None:
                    fits.setdefault((threads, name), []).append(fit_s)
                line.append(f"{name} {n / epoch_s:,.0f}/s")
            print(
                f"  batch {batch_size} threads {threads} rep {rep}: " + ", ".join(line), flush=True
            )
    MODELS.setdefault("model", OmegaConf.to_container(cfg.model, resolve=True))
    MODELS.setdefault("compression", OmegaConf.to_container(cfg.compression, resolve=True))
    rows = []
    for threads in args.threads:
        best = {name: min(s) for (t, name), s in runs.items() if t == threads}
        v, p, e = best["vae"], best["plain"], best["lightning"]
        f = min(fits[threads, "lightning"])
        row = {
            "batch_size": batch_size,
            "threads": threads,
            "train_states": n,
            "seed_vae_states_per_s": n / v,
            "plain_states_per_s": n / p,
            "lightning_states_per_s": n / e,
            "ratio": p / e,
            "plain_vs_vae": v / p,
            "lightning_vs_vae": v / e,
            "seed_vae_s_all": runs[threads, "vae"],
            "lightning_fit_s": f,
            "lightning_fit_states_per_s": n / f,
            "plain_s_all": runs[threads, "plain"],
            "lightning_s_all": runs[threads, "lightning"],
            "lightning_fit_s_all": fits[threads, "lightning"],
        }
        if args.compile:
            pc, ec = best["plain_compiled"], best["lightning_compiled"]
            row.update(
                {
                    "plain_compiled_states_per_s": n / pc,
                    "lightning_compiled_states_per_s": n / ec,
                    "plain_compiled_vs_vae": v / pc,
                    "lightning_compiled_vs_vae": v / ec,
                    "lightning_compiled_fit_s": min(fits[threads, "lightning_compiled"]),
                    "compile_cold_s": compiling["cold"],
                    "compile_warm_s": compiling["warm"],
                    "plain_compiled_s_all": runs[threads, "plain_compiled"],
                    "lightning_compiled_s_all": runs[threads, "lightning_compiled"],
                }
            )
        rows.append(row)
    return rows


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.batch_norm=false")
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
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also both loops with the step compiled (compile=true), and compile seconds",
    )
    args = parser.parse_args()
    quiet_libraries()
    threads_before = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in args.batch_sizes:
            rows.extend(bench_batch(args, batch_size, Path(tmp)))
    torch.set_num_threads(threads_before)
    results = {
        "states": args.states,
        "overrides": args.overrides,
        "repeats": args.repeats,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "target_lightning_vs_vae": TARGET_LIGHTNING_VS_VAE,
        "target_plain_vs_vae": TARGET_PLAIN_VS_VAE,
        "research_code_states_per_s_batch64": RESEARCH_STATES_PER_S,
        **MODELS,
        "rows": rows,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print_table(results)
    name = "train_throughput" + "".join(f"_{o}" for o in args.overrides)
    if args.compile:
        name += "_compile"
    if args.threads != [1]:
        name += "_threads" + "-".join(map(str, args.threads))
    write_results(name, results)


def print_table(r: dict[str, Any]) -> None:
    """The results as an aligned text table."""
    print(
        f"\ntraining throughput, {r['states']:,} states {' '.join(r['overrides'])}, "
        f"best of {r['repeats']} "
        f"({r['machine']}, torch {r['torch']}, lightning {r['lightning']})"
    )
    print(
        f"{'batch':>5} {'threads':>7} {'seed VAE/s':>11} {'plain/s':>9} {'lightning/s':>12} "
        f"{'plain/VAE':>9} {'light/VAE':>9} {'light/plain':>11} {'fit s':>6}"
    )
    for row in r["rows"]:
        marks = [
            "" if row["plain_vs_vae"] >= r["target_plain_vs_vae"] else "*",
            "" if row["lightning_vs_vae"] >= r["target_lightning_vs_vae"] else "*",
        ]
        print(
            f"{row['batch_size']:>5} {row['threads']:>7} {row['seed_vae_states_per_s']:>11,.0f} "
            f"{row['plain_states_per_s']:>9,.0f} {row['lightning_states_per_s']:>12,.0f} "
            f"{row['plain_vs_vae']:>8.2f}{marks[0]:1} {row['lightning_vs_vae']:>8.2f}{marks[1]:1} "
            f"{row['ratio']:>11.2f} {row['lightning_fit_s']:>6.1f}"
        )
    if "compile_cold_s" in r["rows"][0]:
        print_compiled(r)
    print(f"peak RSS {r['peak_rss_mib']:,.0f} MiB")
    print(
        f"* below target (plain >= {r['target_plain_vs_vae']}x, lightning >= "
        f"{r['target_lightning_vs_vae']}x the seed-size VAE loop). seed VAE = hand-written loop of "
        "a plain VAE 15-256-128-64-32 (MSE + KL, Adam); plain = the project's module in a "
        "hand-written loop; lightning = training-epoch window of trainer.fit; fit s = whole fit"
    )


def print_compiled(r: dict[str, Any]) -> None:
    """The compiled loops (``--compile``) beside the seed VAE, and the compile seconds."""
    print(
        f"\nwith compile=true (steady state; compiling excluded, reported as the first step's "
        f"seconds in a fresh process)\n{'batch':>5} {'threads':>7} {'seed VAE/s':>11} "
        f"{'plain c/s':>10} {'light c/s':>10} {'plain c/VAE':>11} {'light c/VAE':>11} "
        f"{'vs eager':>8} {'cold s':>7} {'warm s':>7}"
    )
    for row in r["rows"]:
        mark = "" if row["lightning_compiled_vs_vae"] >= r["target_lightning_vs_vae"] else "*"
        print(
            f"{row['batch_size']:>5} {row['threads']:>7} {row['seed_vae_states_per_s']:>11,.0f} "
            f"{row['plain_compiled_states_per_s']:>10,.0f} "
            f"{row['lightning_compiled_states_per_s']:>10,.0f} "
            f"{row['plain_compiled_vs_vae']:>11.2f} {row['lightning_compiled_vs_vae']:>10.2f}{mark:1} "
            f"{row['lightning_compiled_states_per_s'] / row['lightning_states_per_s']:>7.2f}x "
            f"{row['compile_cold_s']:>7.1f} {row['compile_warm_s']:>7.1f}"
        )


if __name__ == "__main__":
    main()
