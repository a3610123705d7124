"""The whole simulation.db as a .mtc file, beside what general tools make of the same file.

For each database: the one-command ``python -m meaning_transform.codec compress data.path=DB
out=F`` (no checkpoint: the codec picks its model, ``conf/codec.yaml``), then ``decompress``
and ``verify``, each as a fresh process the way a user runs them (wall time and the process's
own peak resident memory, VmHWM), and side by side on the same file:

- bits per agent state of every table in the .mtc (its sections' bytes, framing included; the
  header and the embedded model on their own rows) against Parquet + zstd-19 of that table;
- the whole file against ``zstd -19`` and ``xz -9`` of the database file and Parquet+zstd-19 of
  every table (``db_anchors.py``), with compress / decompress throughput in MB of SQLite file
  per second;
- whether an independent comparison passes: ``verify`` (decompress and compare every table
  and object, cell by cell with storage classes; agent_states' features within tolerance).

    python benchmarks/archive.py                           # both shared databases
    python benchmarks/archive.py --data run1 synthetic     # + the 1M-state synthetic database

Prints a table and writes benchmarks/results/archive.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402
from db_anchors import agent_states_rows, file_anchors, parquet_anchor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from agentfarm_db import write_agentfarm_db  # noqa: E402

from meaning_transform.codec.container import Reader  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = {"run1": SHARED / "agentfarm_run1.db", "run3_moving": SHARED / "agentfarm_run3_moving.db"}
#: a process running the codec's command line, reporting its own peak memory (VmHWM) on exit
_RUN = """
import atexit, re, runpy, sys
def peak():
    kb = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
    print(f"peak_kib={kb}", file=sys.stderr)
atexit.register(peak)
sys.argv = ["meaning-codec", *sys.argv[1:]]
runpy.run_module("meaning_transform.codec", run_name="__main__")
"""


def run_codec(*args: str) -> dict[str, Any]:
    """One codec command in a fresh process: its output, wall time and peak memory."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, *args], capture_output=True, text=True, timeout=3600
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"codec {args[0]} failed: {proc.stderr[-2000:]}")
    peak = [line for line in proc.stderr.splitlines() if line.startswith("peak_kib=")]
    return {
        "seconds": seconds,
        "peak_mib": int(peak[-1].split("=")[1]) / 1024 if peak else None,
        "stdout": proc.stdout.strip(),
    }


def section_bytes(path: Path) -> dict[str, int]:
    """Bytes of the file per table (its sections, framing included), header and model."""
    sizes: dict[str, int] = {}
    with open(path, "rb") as fh:
        reader = Reader(fh, str(path))
        sizes["(header)"] = fh.tell() - len(reader.model) - 12  # magic .. header
        sizes["(model)"] = len(reader.model) + 12
        for kind, item, _ in reader.sections():
            if kind == "states":
                name, size = "agent_states", len(item.payload()) + 12
            else:
                name, size = item[0], len(item[1]) + 2 + 12
            sizes[name] = sizes.get(name, 0) + size
    sizes["(end)"] = path.stat().st_size - sum(sizes.values())
    return sizes


def bench(name: str, db: Path, work: Path, extra: list[str]) -> dict[str, Any]:
    """Everything measured on one database."""
    states = agent_states_rows(db)
    mtc, restored = work / f"{name}.mtc", work / f"{name}.restored.db"
    size = db.stat().st_size
    compress = run_codec("compress", f"data.path={db}", f"out={mtc}", *extra)
    decompress = run_codec("decompress", f"in={mtc}", f"out={restored}")
    verify = run_codec("verify", f"in={mtc}", f"data.path={db}")
    ours = {
        "bytes": mtc.stat().st_size,
        "bits_per_state": 8 * mtc.stat().st_size / states,
        "tables": section_bytes(mtc),
        "compress": compress,
        "decompress": decompress,
        "verify": verify["stdout"],
        "compress_mb_s": size / 1e6 / compress["seconds"],
        "decompress_mb_s": size / 1e6 / decompress["seconds"],
    }
    return {
        "db": str(db),
        "db_bytes": size,
        "states": states,
        "ours": ours,
        "files": file_anchors(db, states),
        "parquet": parquet_anchor(db, states),
    }


def table(results: dict[str, Any]) -> str:
    """The printed tables."""
    lines = []
    for name, r in results["databases"].items():
        n, ours, pq = r["states"], r["ours"], r["parquet"]
        lines.append(f"\n{name}: {r['db_bytes']:,} bytes, {n:,} agent states")
        lines.append(
            f"  {'table':<22} {'ours bits/state':>16} {'Parquet+zstd-19':>16} {'ratio':>7}"
        )
        pq_tables = {t: v["bytes"] for t, v in pq["tables"].items()}
        for t, b in sorted(ours["tables"].items(), key=lambda x: -x[1]):
            p = pq_tables.get(t)
            ratio = f"{b / p:.3f}" if p else ""
            p_bits = f"{8 * p / n:.2f}" if p else ""
            lines.append(f"  {t:<22} {8 * b / n:>16.2f} {p_bits:>16} {ratio:>7}")
        files = r["files"]
        total = ours["bytes"]
        lines.append(
            f"  {'whole file':<22} {8 * total / n:>16.2f} {8 * pq['bytes'] / n:>16.2f} "
            f"{total / pq['bytes']:>7.3f}"
        )
        for tool in ("zstd-19", "xz-9"):
            f = files[tool]
            lines.append(
                f"  vs {tool} of the db file: {f['bytes']:,} bytes ({8 * f['bytes'] / n:.1f} "
                f"bits/state), ours {total / f['bytes']:.3f}x; compress {f['compress_mb_per_s']:.2f} "
                f"MB/s, decompress {f['decompress_mb_per_s']:.1f} MB/s"
            )
        lines.append(
            f"  ours: compress {ours['compress_mb_s']:.2f} MB/s ({ours['compress']['seconds']:.1f} s, "
            f"peak {ours['compress']['peak_mib']:.0f} MiB), decompress "
            f"{ours['decompress_mb_s']:.2f} MB/s ({ours['decompress']['seconds']:.1f} s, peak "
            f"{ours['decompress']['peak_mib']:.0f} MiB)"
        )
        lines.append(f"  verify: {ours['verify']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["run1", "run3_moving"],
                        choices=[*REAL, "synthetic"])  # fmt: skip
    parser.add_argument("--synthetic-states", type=int, default=1_000_000)
    parser.add_argument("--out", default="archive")
    parser.add_argument("codec_args", nargs="*", help="extra codec overrides, e.g. coder=fit")
    args = parser.parse_args()
    results: dict[str, Any] = {"codec_args": args.codec_args, "databases": {}}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for name in args.data:
            if name == "synthetic":
                db = work / "synthetic.db"
                write_agentfarm_db(db, args.synthetic_states)
            else:
                db = REAL[name]
                if not db.exists():
                    print(f"{name}: {db} not found, skipped")
                    continue
            results["databases"][name] = bench(name, db, work, args.codec_args)
            print(table({"databases": {name: results["databases"][name]}}), flush=True)
    path = write_results(args.out, results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
