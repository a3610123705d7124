"""Start-up: how fast ``train.py`` answers a bad config, ``--cfg``, ``--help``, and reaches step 1.

Each row runs ``python train.py ...`` as a user would (a fresh process, best of ``--repeats``) and
records wall time and peak RSS (of the process, from ``wait4``). The first-step row adds a callback
(``_first_step.FirstStep``) that records seconds since the process started and RSS when the first
training batch starts, on 1,000 synthetic states (so data is a negligible part of it). Prints a
table and writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"bad_config_s": 1.0, "first_step_s": 4.0, "first_step_rss_mib": 400.0}


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit code) of ``python train.py ARGS``."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    """Run every row, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "first_step.json"
        cases = {
            "bad_config (compression=foo)": ["compression=foo"],
            "bad_value (model.latent_dim=0)": ["model.latent_dim=0", f"paths.log_dir={tmp}"],
            "--cfg job": ["--cfg", "job"],
            "--help": ["--help"],
            "first step (1,000 states)": [
                "data.num_states=1000",
                "trainer.max_epochs=1",
                "test=false",
                "logger=none",
                f"paths.log_dir={tmp}",
                "+callbacks.first_step._target_=_first_step.FirstStep",
                f"+callbacks.first_step.path={out}",
            ],
        }
        for name, argv in cases.items():
            runs, firsts = [], []
            for _ in range(args.repeats):
                runs.append(timed(argv, env))
                if out.exists():
                    firsts.append(json.loads(out.read_text()))
                    out.unlink()
            wall, rss, code = min(runs)
            row: dict[str, Any] = {"case": name, "wall_s": wall, "peak_rss_mib": rss, "exit": code}
            if firsts:
                row["first_step"] = min(firsts, key=lambda f: f["seconds_since_start"])
                row["first_step_all"] = firsts
            rows.append(row)
    results = {"repeats": args.repeats, "targets": TARGETS, "rows": rows}
    print(f"\nstart-up of train.py, best of {args.repeats}")
    print(f"{'case':<32} {'exit':>4} {'wall s':>7} {'peak RSS MiB':>13} {'first step s':>13}")
    for r in rows:
        first = r.get("first_step", {})
        step = f"{first['seconds_since_start']:.2f}" if first else "-"
        print(
            f"{r['case']:<32} {r['exit']:>4} {r['wall_s']:>7.2f} {r['peak_rss_mib']:>13.0f} {step:>13}"
        )
    first = next((r["first_step"] for r in rows if "first_step" in r), None)
    if first:
        print(f"at the first step: RSS {first['rss_mib']:.0f} MiB (targets: {TARGETS})")
    write_results("startup", results)


if __name__ == "__main__":
    main()
