"""Data-layer throughput: synthetic generation and SQLite -> normalized training tensor.

Prints a table and writes benchmarks/results/data_throughput.json. Run small with --rows 100000.
The naive baseline is the row-by-row ORM style of earlier research code: one Python object per
row, then objects -> tensor.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from _results import write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from agentfarm_db import write_agentfarm_db  # noqa: E402  (the tests' AgentFarm-db writer)

from meaning_transform.data import generate_synthetic, load_sqlite
from meaning_transform.schema import FeatureSchema
from meaning_transform.schema.table import encode, fit

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "conf" / "schema" / "agentfarm.yaml"
TARGET_ROWS_PER_S = 1_000_000
STATE_COLUMNS = (
    "agent_id", "step_number", "position_x", "position_y", "position_z", "resource_level",
    "starvation_counter", "current_health", "starting_health", "is_defending", "total_reward",
    "age",
)  # fmt: skip


def best_of(repeats: int, fn: Callable[[], Any]) -> float:
    """Fastest wall time of ``repeats`` calls, in seconds."""
    return best_of_with_cpu(repeats, fn)[0]


def best_of_with_cpu(repeats: int, fn: Callable[[], Any]) -> tuple[float, float]:
    """Fastest wall time of ``repeats`` calls and the least process CPU time (all threads), in s.

    The CPU time tells a slow run on a busy machine (wall >> CPU / threads) from slow code.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def generation_memory_mib(rows: int) -> tuple[float, float]:
    """Peak RSS of a fresh process generating ``rows`` states, and the generator's own peak.

    The RSS includes the interpreter and the package's imports (torch); the generator's peak is
    the most memory numpy held at once during generation (tracemalloc traces numpy buffers).
    """
    code = (
        "import resource, tracemalloc\n"
        "from meaning_transform.data import generate_synthetic\n"
        "tracemalloc.start()\n"
        f"generate_synthetic({rows})\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " tracemalloc.get_traced_memory()[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rss_kib, traced_bytes = map(int, out.stdout.split())
    return rss_kib / 1024, traced_bytes / 2**20


def fast_path(path: Path, schema: FeatureSchema) -> torch.Tensor:
    """The project's path: columnar load, fit on the table, encode."""
    table = load_sqlite(path, schema)
    return encode(fit(schema, table), table)


@dataclass
class AgentStateRecord:
    """One row as an object, the way the earlier research code held agent states."""

    agent_id: str
    step_number: int
    position_x: float
    position_y: float
    position_z: float | None
    resource_level: float
    starvation_counter: int
    current_health: float
    starting_health: float
    is_defending: bool
    total_reward: float
    age: int
    agent_type: str | None


def naive_path(path: Path, layout: FeatureSchema) -> torch.Tensor:
    """Row-by-row: fetch joined rows, one object per row, Python statistics, objects -> tensor.

    ``layout`` (a fitted schema) only says which columns to produce; the statistics and the
    vocabulary are computed here, in pure Python, as the earlier code did.
    """
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    cols = ", ".join(f"s.{c}" for c in STATE_COLUMNS)
    records = [
        AgentStateRecord(*row)
        for row in con.execute(
            f"SELECT {cols}, a.agent_type FROM agent_states s "
            "LEFT JOIN agents a ON a.agent_id = s.agent_id"
        )
    ]
    con.close()
    stats, vocab = {}, {}
    for f in layout.features:
        values = [getattr(r, f.name) for r in records]
        if f.kind == "continuous":
            mean = sum(values) / len(values)
            stats[f.name] = (mean, (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5)
        elif f.kind == "categorical":
            vocab[f.name] = sorted(set(values))
    rows = []
    for r in records:
        row = []
        for f in layout.features:
            v = getattr(r, f.name)
            if f.kind == "continuous":
                row.append((v - stats[f.name][0]) / (stats[f.name][1] or 1.0))
            elif f.kind == "binary":
                row.append(float(v))
            else:
                row.append(float(vocab[f.name].index(v)))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


def main() -> None:
    """Run the benchmarks, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="states per benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    schema = FeatureSchema.from_config(yaml.safe_load(SCHEMA.read_text()))

    gen_s = best_of(args.repeats, lambda: generate_synthetic(args.rows))
    peak_mb, traced_mb = generation_memory_mib(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "simulation.db"
        start = time.perf_counter()
        write_agentfarm_db(db, args.rows)
        write_s = time.perf_counter() - start
        fast_s, fast_cpu_s = best_of_with_cpu(args.repeats, lambda: fast_path(db, schema))
        load_s = best_of(args.repeats, lambda: load_sqlite(db, schema))
        layout = fit(schema, load_sqlite(db, schema, limit=args.rows))
        start = time.perf_counter()
        naive = naive_path(db, layout)
        naive_s = time.perf_counter() - start
        # Both paths give the same tensor (up to float32 rounding of the normalization).
        torch.testing.assert_close(naive, fast_path(db, schema), rtol=1e-4, atol=1e-4)

    rows = args.rows
    results = {
        "rows": rows,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "synthetic_states_per_s": rows / gen_s,
        "synthetic_peak_rss_mib": peak_mb,
        "synthetic_generator_peak_mib": traced_mb,
        "sqlite_write_s": write_s,
        "sqlite_load_only_rows_per_s": rows / load_s,
        "sqlite_to_tensor_rows_per_s": rows / fast_s,
        "sqlite_to_tensor_cpu_s": fast_cpu_s,
        "cpus": os.cpu_count(),
        "sqlite_to_tensor_target_rows_per_s": TARGET_ROWS_PER_S,
        "sqlite_to_tensor_ratio_to_target": rows / fast_s / TARGET_ROWS_PER_S,
        "naive_row_by_row_rows_per_s": rows / naive_s,
        "speedup_over_naive": naive_s / fast_s,
        "peak_rss_this_process_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print_table(results)
    write_results("data_throughput", results)


def print_table(r: dict[str, Any]) -> None:
    """The results as an aligned text table."""
    target = r["sqlite_to_tensor_target_rows_per_s"]
    lines = [
        ("synthetic generation", f"{r['synthetic_states_per_s']:,.0f} states/s", "", ""),
        ("synthetic peak RSS", f"{r['synthetic_peak_rss_mib']:,.0f} MiB", "", ""),
        ("  of it, generator's own peak", f"{r['synthetic_generator_peak_mib']:,.0f} MiB", "", ""),
        ("SQLite load only", f"{r['sqlite_load_only_rows_per_s']:,.0f} rows/s", "", ""),
        (
            "SQLite -> tensor (load+fit+encode)",
            f"{r['sqlite_to_tensor_rows_per_s']:,.0f} rows/s",
            f"{target:,} rows/s",
            f"{r['sqlite_to_tensor_ratio_to_target']:.2f}",
        ),
        (
            "  its CPU time (all threads)",
            f"{r['sqlite_to_tensor_cpu_s']:.2f} s on {r['cpus']} CPUs",
            "",
            "",
        ),
        ("naive row-by-row -> tensor", f"{r['naive_row_by_row_rows_per_s']:,.0f} rows/s", "", ""),
        ("speedup over naive", f"{r['speedup_over_naive']:.1f}x", "", ""),
    ]
    print(f"data throughput, {r['rows']:,} rows ({r['machine']}, Python {r['python']})")
    print(f"{'measure':<36} {'value':>20} {'target':>18} {'ratio to target':>16}")
    for name, value, tgt, ratio in lines:
        print(f"{name:<36} {value:>20} {tgt:>18} {ratio:>16}")


if __name__ == "__main__":
    main()
