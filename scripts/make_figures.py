"""Regenerate every figure the docs show, from real runs: ``python scripts/make_figures.py``.

Runs, in a temporary folder, with this checkout's package:

- the default training run (``meaning-train`` with every default: synthetic data, entropy
  bottleneck), and copies its ``training_curves.png`` and ``semantic_drift.png`` into ``docs/``;
- a four-job sweep (``meaning-train -m compression=entropy,vq compression.level=1,8
  trainer.max_epochs=10``), and copies its report's ``rate_drift.png`` into ``docs/``.

``--quick`` adds ``data.num_states=2000 trainer.max_epochs=5`` to every run (a smoke test of
this script, not figures for the docs). Each figure's caption in the docs names the command
that made it; keep them in step with ``RUNS``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
#: (overrides, {figure in the run or sweep folder: its name in docs/}, whether it is a sweep)
RUNS = [
    (
        ["experiment_name=figures"],
        {"training_curves.png": "training_curves.png", "semantic_drift.png": "semantic_drift.png"},
        False,
    ),
    (
        [
            "-m",
            "experiment_name=figures_sweep",
            "compression=entropy,vq",
            "compression.level=1,8",
            "trainer.max_epochs=10",
        ],
        {"rate_drift.png": "rate_drift.png"},
        True,
    ),
]
QUICK = ["data.num_states=2000", "trainer.max_epochs=5"]


def train(overrides: list[str], workdir: Path) -> None:
    """``meaning-train`` with ``overrides`` in ``workdir`` (outputs under ``workdir/outputs``)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "meaning_transform.train", *overrides]
    print("$ meaning-train " + " ".join(overrides), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)


def run_folder(workdir: Path, overrides: list[str], sweep: bool) -> Path:
    """The folder the run (or the sweep) wrote: the only one under its experiment name."""
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("experiment_name="))
    found = sorted((workdir / "outputs" / name).glob("multirun/*" if sweep else "[0-9]*"))
    if len(found) != 1:
        raise SystemExit(f"expected one run folder for {name}, found {len(found)}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    """Run every entry of ``RUNS`` and copy its figures into ``docs/``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"add {' '.join(QUICK)} (smoke test)")
    parser.add_argument("--out", type=Path, default=DOCS, help="where the figures go (docs/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mt-figures-") as tmp:
        workdir = Path(tmp)
        for overrides, figures, sweep in RUNS:
            if args.quick:  # QUICK replaces the run's own value of a key it sets
                keys = {q.split("=", 1)[0] for q in QUICK}
                overrides = [o for o in overrides if o.split("=", 1)[0] not in keys] + QUICK
            train(overrides, workdir)
            folder = run_folder(workdir, overrides, sweep)
            for source, target in figures.items():
                shutil.copyfile(folder / source, args.out / target)
                print(f"  {args.out / target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
