"""The codec command against the classical floor and general-purpose compressors.

For each data set a lossless model (``compression=lossless``) is trained on the training agents
of the default split, without and with ``model.context=previous``, and the database of the
**test agents** (held out) is compressed, decompressed and verified. Reported per state:

- ``codec`` / ``codec+ctx``: real file size (header, model hash, keys, other columns and both
  ANS streams; the model is not embedded) and the model's own streams alone (``model bits``);
- ``quantizer`` / ``delta``: the classical per-column quantizer (order-0 tables) and per-agent
  delta code at k = 1 on the same agents, really coded (``baselines.py``);
- ``zstd db``: ``zstd -19`` of the test agents' database file; ``zstd grid``: ``zstd -19`` of
  their grid symbols (the meaning grid at k = 1, column by column, smallest integer type);
- compress / decompress speed (states/s, coding only: the model is loaded first) on the test
  database and, for the synthetic data, on the whole database.

Goals: codec <= quantizer bits; codec+ctx <= 0.8 x delta bits; drift exactly 0 (verify passes);
compress and decompress >= 200k states/s.

    python benchmarks/codec.py                                 # run1, run3_moving, synthetic 1M
    python benchmarks/codec.py --data synthetic --synthetic-states 100000 --epochs 5

Prints a table and writes benchmarks/results/codec.json.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import new_results, write_results  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from agentfarm_db import write_agentfarm_db  # noqa: E402  (the tests' AgentFarm-db writer)
from rate_drift import QUIET, SHARED  # noqa: E402

from meaning_transform.api import load_config  # noqa: E402
from meaning_transform.codec import commands  # noqa: E402
from meaning_transform.codec.model import load_model  # noqa: E402
from meaning_transform.config import instantiate_checked  # noqa: E402
from meaning_transform.grid import MeaningGrid  # noqa: E402
from meaning_transform.training import run  # noqa: E402

REAL = {"run1": SHARED / "agentfarm_run1.db", "run3_moving": SHARED / "agentfarm_run3_moving.db"}


VARIANTS = {"codec": "null", "codec_prev": "previous", "codec_hist": "history"}


def train(db: Path, context: str, epochs: int, batch: int, out: Path) -> dict[str, Any]:
    """Train a lossless model on ``db``'s training agents; its summary."""
    overrides = [
        *QUIET,
        "compression=lossless",
        "data=sqlite",
        f"data.path={db}",
        f"data.batch_size={batch}",
        f"trainer.max_epochs={epochs}",
        f"model.context={context}",
        f"paths.output_dir={out}",
    ]
    return run(load_config(overrides))


def test_agents_db(db: Path, out: Path) -> tuple[Path, Any]:
    """A copy of ``db`` holding only the test agents (agent_states and agents); their split."""
    cfg = load_config(["data=sqlite", f"data.path={db}"])
    dm = instantiate_checked(cfg.data, "data", schema=cfg.schema)
    dm.setup()
    ids = [str(a) for a in dm.split_agents["test"]]
    with closing(sqlite3.connect(out)) as con:
        con.execute("ATTACH DATABASE ? AS src", (f"file:{db}?mode=ro",))
        marks = ", ".join("?" for _ in ids)
        for table in ("agent_states", "agents"):
            sql = con.execute(
                "SELECT sql FROM src.sqlite_master WHERE type='table' AND name=?", (table,)
            ).fetchone()
            if sql is None:
                continue
            con.execute(sql[0])
            con.execute(
                f"INSERT INTO {table} SELECT * FROM src.{table} WHERE agent_id IN ({marks})", ids
            )
        con.commit()
    return out, dm


def zstd_bytes(data: bytes) -> int:
    """Size of ``data`` under zstd -19."""
    return len(zstandard.ZstdCompressor(level=19).compress(data))


def grid_columns(dm: Any) -> bytes:
    """Test split's meaning-grid symbols (k = 1), column by column, smallest integer type."""
    symbols = MeaningGrid(dm.schema, 1).encode(dm.test_x)
    parts = []
    for col in symbols.T:
        lo, hi = int(col.min()), int(col.max())
        dtype = (
            np.int8
            if lo >= -128 and hi < 128
            else np.int16
            if lo >= -(2**15) and hi < 2**15
            else np.int32
        )
        parts.append(col.astype(dtype).tobytes())
    return b"".join(parts)


def codec_run(ckpt: str, db: Path, work: Path, name: str) -> dict[str, Any]:
    """Compress, decompress and verify ``db``; sizes and speeds."""
    load_model(ckpt)  # warm imports: speeds measure coding, not loading torch/Lightning
    out, restored = work / f"{name}.mtc", work / f"{name}.db"
    c = commands.compress(ckpt, str(db), str(out))
    d = commands.decompress(str(out), str(restored))
    v = commands.verify(str(out), str(db))
    from meaning_transform.codec.container import Reader

    with open(out, "rb") as fh:
        streams = sum(4 * (len(ch.z_words) + len(ch.x_words)) for ch in Reader(fh, name).chunks())
    n = c["states"]
    return {
        "states": n,
        "file_bytes": c["bytes"],
        "file_bits_per_state": 8 * c["bytes"] / n,
        "model_bits_per_state": 8 * streams / n,
        "estimated_bits_per_state": c["estimated_bits"] / n,
        "compress_states_per_s": n / c["seconds"],
        "decompress_states_per_s": d["states"] / d["seconds"],
        "verified_states": v["states"],
        "max_error_in_tolerances": max(v["max_error_in_tolerances"].values()),
    }


def bench(name: str, db: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every row of one data set."""
    test_db, dm = test_agents_db(db, work / f"{name}_test.db")
    n = int(dm.test_x.shape[0])
    res: dict[str, Any] = {"test_states": n, "test_agents": len(dm.split_agents["test"])}
    big = name == "synthetic"
    epochs = args.synthetic_epochs if big else args.epochs
    batch = args.synthetic_batch_size if big else args.batch_size
    for key, context in VARIANTS.items():
        t = time.perf_counter()
        summary = train(db, context, epochs, batch, work / f"{name}_{key}")
        res[f"{key}_train_seconds"] = time.perf_counter() - t
        res[f"{key}_epochs"] = summary.get("epochs_run", summary.get("best_epoch"))
        res[f"{key}_test_drift"] = summary.get("drift")
        res[key] = codec_run(summary["best_model_path"], test_db, work, f"{name}_{key}")
        if args.whole_db and big:
            res[f"{key}_whole_db"] = codec_run(
                summary["best_model_path"], db, work, f"{name}_{key}_all"
            )
        b = summary["baselines"]
    res["quantizer"] = {k: b["quantizer"][0][k] for k in ("bits_per_state", "coded_bits_per_state")}
    res["delta"] = {k: b["delta"][0][k] for k in ("bits_per_state", "coded_bits_per_state")}
    res["zstd_db_bits_per_state"] = 8 * zstd_bytes(test_db.read_bytes()) / n
    res["zstd_grid_bits_per_state"] = 8 * zstd_bytes(grid_columns(dm)) / n
    return res


def table(results: dict[str, Any]) -> str:
    """The printed table: bits per state and speeds."""
    lines = [
        "bits/state on the test agents: model streams (file incl. keys and header); "
        "speeds in states/s (compress/decompress)",
        f"{'data (test states)':<24} {'codec':>15} {'codec+prev':>15} {'codec+hist':>15} "
        f"{'quantizer':>9} {'delta':>6} {'zstd db':>8} {'zstd grid':>9}",
    ]
    for name, r in results["data"].items():
        cells = [
            f"{r[k]['model_bits_per_state']:>5.2f} ({r[k]['file_bits_per_state']:6.2f})"
            for k in VARIANTS
        ]
        lines.append(
            f"{name + ' (' + format(r['test_states'], ',') + ')':<24} "
            + " ".join(f"{c:>15}" for c in cells)
            + f" {r['quantizer']['coded_bits_per_state']:>9.2f} "
            f"{r['delta']['coded_bits_per_state']:>6.2f} "
            f"{r['zstd_db_bits_per_state']:>8.1f} {r['zstd_grid_bits_per_state']:>9.2f}"
        )
        for key in VARIANTS:
            for where, v in (("test db", r[key]), ("whole db", r.get(f"{key}_whole_db"))):
                if v is not None:
                    lines.append(
                        f"  {key:<10} {where:<8} {v['states']:>9,} states: compress "
                        f"{v['compress_states_per_s']:>9,.0f}/s, decompress "
                        f"{v['decompress_states_per_s']:>9,.0f}/s, file "
                        f"{v['file_bits_per_state']:.2f} bits/state"
                    )
        q, d = r["quantizer"]["coded_bits_per_state"], r["delta"]["coded_bits_per_state"]
        verified = all(r[k]["verified_states"] == r["test_states"] for k in VARIANTS)
        lines.append(
            f"  goals: codec / quantizer = {r['codec']['model_bits_per_state'] / q:.3f} (<= 1); "
            f"codec+prev / delta = {r['codec_prev']['model_bits_per_state'] / d:.2f}, "
            f"codec+hist / delta = {r['codec_hist']['model_bits_per_state'] / d:.2f} (<= 0.8); "
            f"verified, drift 0: {verified}"
        )
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["run1", "run3_moving", "synthetic"])
    p.add_argument("--synthetic-states", type=int, default=1_000_000)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--synthetic-epochs", type=int, default=10)
    p.add_argument("--synthetic-batch-size", type=int, default=1024)
    p.add_argument("--out", default="codec", help="results name: benchmarks/results/<out>.json")
    p.add_argument("--no-whole-db", dest="whole_db", action="store_false")
    args = p.parse_args()
    logging.getLogger("meaning_transform").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    results = new_results(args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.data:
            if name == "synthetic":
                db = work / "synthetic.db"
                write_agentfarm_db(db, args.synthetic_states)
                name = f"synthetic_{args.synthetic_states}"
            else:
                db = REAL[name]
                if not db.exists():
                    print(f"skipping {name}: {db} not found")
                    continue
            print(f"{name}: training and coding ...", flush=True)
            results["data"][name] = bench(
                name if "synthetic" not in name else "synthetic", db, args, work
            )
    print(table(results))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
