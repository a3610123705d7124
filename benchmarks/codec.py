"""The codec command against the classical floor, general-purpose compressors and the anchors.

For each data set the codec's default coder (the adaptive context coder: no model, no training)
compresses, decompresses and verifies the database of the **test agents** of the default split
(agent_states and agents only) and the whole source database (``codec_file.round_trip``);
reported per agent state: its feature streams, + keys and framing (the agent_states sections),
+ agent_states' share of the header (its SQL, fitted schema, state description and model
entry), and the whole .mtc file. Unless ``--no-train``, a lossless model
(``compression=lossless``) is also trained on the training agents, without and with
``model.context=previous``/``history``, and codes the test agents' database the same way:

- ``codec`` / ``codec+prev`` / ``codec+hist``: the model's own streams and the real file size
  (header, model hash, keys, other columns and both ANS streams; the model is not embedded);
- ``quantizer`` / ``delta``: the classical per-column quantizer (order-0 tables) and per-agent
  delta code at k = 1 on the same agents, really coded (``baselines.py``).

Beside them, on the same rows (test agents, and all agents):

- ``zstd db``: ``zstd -19`` of the test agents' database file;
- the anchors (``anchors.py``): ``zstd -19``, OpenZL, SZ3, pcodec and ZFP of the features, every
  value checked within tolerance, and the keys under ``zstd -19`` (so "features + keys" compares
  with our agent_states sections);
- whole-database anchors (``db_anchors.py``) of the source database: ``zstd -19`` and ``xz -9``
  of the file (bytes, MB/s) and Parquet + zstd -19 of every table, as bits per agent state;
- compress / decompress speed (states/s; the trained codec: coding only, the model loaded
  first).

Goals: the default coder's sections + header share <= 0.7x OpenZL + keys; codec <= quantizer
bits; codec+ctx <= 0.8 x delta bits; drift exactly 0 (verify passes); compress and decompress
>= 200k states/s. Anchors whose package is missing (``pip install -e
.[bench]``) are skipped with one line.

    python benchmarks/codec.py                                 # run1, run3_moving, synthetic 1M
    python benchmarks/codec.py --data synthetic --synthetic-states 100000 --epochs 5
    python benchmarks/codec.py --no-train --data run1 run3_moving   # no training: minutes

Prints a table and writes benchmarks/results/codec.json (``--out``).
"""

from __future__ import annotations

import argparse
import logging
import platform
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import torch
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402
from anchor_rows import state_rows  # noqa: E402
from anchors import measure_anchors  # noqa: E402
from codec_file import round_trip  # noqa: E402
from db_anchors import db_anchors  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from agentfarm_db import write_agentfarm_db  # noqa: E402  (the tests' AgentFarm-db writer)
from rate_drift import QUIET, SHARED  # noqa: E402

from meaning_transform.api import load_config  # noqa: E402
from meaning_transform.codec.model import build_model, read_model  # noqa: E402
from meaning_transform.config import instantiate_checked  # noqa: E402
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


def codec_run(ckpt: str, db: Path, work: Path, name: str) -> dict[str, Any]:
    """Compress, decompress and verify ``db`` with the model at ``ckpt``; sizes and speeds."""
    build_model(read_model(ckpt)[0], ckpt)  # warm imports: speeds measure coding, not loading
    return round_trip(db, work, name, ckpt_path=ckpt)


def bench(name: str, db: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every row of one data set."""
    test_db, dm = test_agents_db(db, work / f"{name}_test.db")
    n = int(dm.test_x.shape[0])
    res: dict[str, Any] = {"test_states": n, "test_agents": len(dm.split_agents["test"])}
    print("  the default coder (adaptive, no training) ...", flush=True)
    res["default"] = round_trip(test_db, work, f"{name}_default")
    if args.whole_db:
        res["default_whole_db"] = round_trip(db, work, f"{name}_default_all")
    if not args.no_train:
        res.update(ours(name, db, test_db, args, work))
    res["zstd_db_bits_per_state"] = 8 * zstd_bytes(test_db.read_bytes()) / n
    say = lambda line: print(line, flush=True)  # noqa: E731
    res["anchors"] = {}
    for split, rows in (("test", state_rows(dm, "test")), ("all", state_rows(dm))):
        print(f"  anchors on {split} agents ({rows.n:,} states) ...", flush=True)
        res["anchors"][split] = measure_anchors(rows, say)
    print("  whole-database anchors ...", flush=True)
    res["whole_db"] = db_anchors(db)
    return res


def ours(name: str, db: Path, test_db: Path, args: argparse.Namespace, work: Path) -> dict:
    """Our codec per context variant (trained here) and the classical baselines."""
    res: dict[str, Any] = {}
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
    return res


# ---------------------------------------------------------------------- printing
def _get(d: Any, *path: str) -> Any:
    """``d[path[0]][path[1]]...``, or None where a step is missing."""
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _anchor(path: tuple[str, ...], field: str = "bits_per_state"):
    """Getter of an anchor's number on (data set result, split)."""
    return lambda r, split: _get(r, "anchors", split, *path, field)


def _ours(key: str, field: str):
    """Getter of our codec's number: test agents, or the whole database when coded."""
    return lambda r, split: _get(r, key if split == "test" else f"{key}_whole_db", field)


def _test_only(*path: str):
    return lambda r, split: _get(r, *path) if split == "test" else None


def _plus(a, b):
    """The sum of two getters (None if either is)."""

    def get(r: Any, split: str) -> Any:
        x, y = a(r, split), b(r, split)
        return None if x is None or y is None else x + y

    return get


def _ratio(a, b):
    """The ratio of two getters (None if either is)."""

    def get(r: Any, split: str) -> Any:
        x, y = a(r, split), b(r, split)
        return None if x is None or y is None else x / y

    return get


OPENZL_BEST = ("openzl", "any_layout_per_column")
OPENZL_KEYS = _plus(_anchor(OPENZL_BEST), _anchor(("keys",)))
DEFAULT_SHARE = _ours("default", "with_header_share_bits_per_state")
SHARE_RATIO = _ratio(DEFAULT_SHARE, OPENZL_KEYS)  # the goal: <= 0.7
#: (label, getter[, format]) of each row of the bits table
ROWS = [
    ("default coder: features", _ours("default", "features_bits_per_state")),
    ("  + keys + framing (its sections)", _ours("default", "sections_bits_per_state")),
    ("  + its share of the header", DEFAULT_SHARE),
    ("  whole .mtc file", _ours("default", "file_bits_per_state")),
    ("codec, model streams", _ours("codec", "features_bits_per_state")),
    ("codec, whole file", _ours("codec", "file_bits_per_state")),
    ("codec+prev, model streams", _ours("codec_prev", "features_bits_per_state")),
    ("codec+prev, whole file", _ours("codec_prev", "file_bits_per_state")),
    ("codec+hist, model streams", _ours("codec_hist", "features_bits_per_state")),
    ("codec+hist, whole file", _ours("codec_hist", "file_bits_per_state")),
    ("quantizer (classical, coded)", _test_only("quantizer", "coded_bits_per_state")),
    ("delta (classical, coded)", _test_only("delta", "coded_bits_per_state")),
    ("zstd -19 of the db file", _test_only("zstd_db_bits_per_state")),
    ("zstd -19 of the grid", _anchor(("zstd_grid",))),
    ("OpenZL grid, best graph", _anchor(("openzl", "grid_best_single"))),
    ("OpenZL grid, graph per column", _anchor(("openzl", "grid_per_column"))),
    ("OpenZL deltas, best graph", _anchor(("openzl", "deltas_best_single"))),
    ("OpenZL deltas, graph per column", _anchor(("openzl", "deltas_per_column"))),
    ("OpenZL either, per column", _anchor(OPENZL_BEST)),
    ("SZ3 lorenzo", _anchor(("sz3", "lorenzo"))),
    ("SZ3 predictor per column", _anchor(("sz3", "best_per_column"))),
    ("pcodec grid, best setting", _anchor(("pcodec", "grid_best_single"))),
    ("pcodec deltas, best setting", _anchor(("pcodec", "deltas_best_single"))),
    ("pcodec either, per column", _anchor(("pcodec", "any_layout_per_column"))),
    ("ZFP fixed accuracy", _anchor(("zfp", "fixed_accuracy"))),
    ("keys: ids + (first step, count)", _anchor(("keys",))),
    ("keys without the id texts", _anchor(("keys",), "without_ids_bits_per_state")),
    ("OpenZL either/column + keys", OPENZL_KEYS),
    ("SZ3 lorenzo + keys", _plus(_anchor(("sz3", "lorenzo")), _anchor(("keys",)))),
    (
        "pcodec either/column + keys",
        _plus(_anchor(("pcodec", "any_layout_per_column")), _anchor(("keys",))),
    ),
    ("ZFP + keys", _plus(_anchor(("zfp", "fixed_accuracy")), _anchor(("keys",)))),
    (
        "ratio default features / OpenZL features",
        _ratio(_ours("default", "features_bits_per_state"), _anchor(OPENZL_BEST)),
        ".3f",
    ),
    (
        "ratio default sections / OpenZL + keys",
        _ratio(_ours("default", "sections_bits_per_state"), OPENZL_KEYS),
        ".3f",
    ),
    ("ratio default + header share / OpenZL + keys", SHARE_RATIO, ".3f"),
]


def _anchor_speed(*path: str):
    """Getter of an anchor's (compress, decompress) states/s."""

    def get(r: Any, split: str) -> tuple[float, float] | None:
        a, n = _get(r, "anchors", split, *path), _get(r, "anchors", split, "states")
        if a is None or "compress_seconds" not in a:
            return None
        return n / a["compress_seconds"], n / a["decompress_seconds"]

    return get


def _our_speed(key: str):
    """Getter of our codec's (compress, decompress) states/s (coding only)."""

    def get(r: Any, split: str) -> tuple[float, float] | None:
        v = _get(r, key if split == "test" else f"{key}_whole_db")
        return None if v is None else (v["compress_states_per_s"], v["decompress_states_per_s"])

    return get


SPEED_ROWS = [
    ("default coder (the whole command)", _our_speed("default")),
    *(
        (f"{key.replace('_prev', '+prev').replace('_hist', '+hist')}", _our_speed(key))
        for key in VARIANTS
    ),
    ("zstd -19 of the grid", _anchor_speed("zstd_grid")),
    ("OpenZL either, per column", _anchor_speed(*OPENZL_BEST)),
    ("SZ3 lorenzo", _anchor_speed("sz3", "lorenzo")),
    ("pcodec either, per column", _anchor_speed("pcodec", "any_layout_per_column")),
    ("ZFP fixed accuracy", _anchor_speed("zfp", "fixed_accuracy")),
    ("keys", _anchor_speed("keys")),
]


def _columns(results: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(heading, data set result, split) of every column of the tables."""
    return [
        (f"{name} {split}", r, split)
        for name, r in results["data"].items()
        for split in ("test", "all")
    ]


def _cell(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def _aligned(headings: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    """Rows of (label, cells) under ``headings``, each column as wide as its widest cell."""
    label_w = max(len(label) for label, _ in rows) + 1
    widths = [
        max(len(h), *(len(cells[i]) for _, cells in rows)) + 2 for i, h in enumerate(headings)
    ]
    lines = [" " * label_w + "".join(f"{h:>{w}}" for h, w in zip(headings, widths, strict=True))]
    for label, cells in rows:
        lines.append(
            f"{label:<{label_w}}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    return lines


def table(results: dict[str, Any]) -> str:
    """The printed tables: bits per state of our codec and every anchor; speeds; per-column
    OpenZL graphs; whole-database anchors; our goals."""
    cols = _columns(results)
    headings = [h for h, _, _ in cols]
    bits = [("states", [_cell(_get(r, "anchors", s, "states"), ",") for _, r, s in cols])]
    bits += [(label, [_cell(get(r, s), *fmt) for _, r, s in cols]) for label, get, *fmt in ROWS]
    speeds = [(label, [_rate(get(r, s)) for _, r, s in cols]) for label, get in SPEED_ROWS]
    graphs = [
        (
            feature,
            [_graph(_get(r, "anchors", s, *OPENZL_BEST, "columns", feature)) for _, r, s in cols],
        )
        for feature in _features(results)
    ]
    lines = [
        "bits per agent state; features only unless it says file or keys; test: the test",
        "agents of the default split (our codec's held-out database), all: every agent",
        *_aligned(headings, bits),
        "",
        "speed, thousands of states/s: compress / decompress (in process; trained codec: coding "
        "only, the model loaded first, all: synthetic only; default coder: the whole command, "
        "all: every table of the database)",
        *_aligned(headings, speeds),
        "",
        "OpenZL, best (layout g: grid, d: deltas; graph) per column: bytes when coded alone",
        *(_aligned(headings, graphs) if graphs else ["(not measured)"]),
        "",
        _whole_db_table(results),
    ]
    lines += ["", "goals"]
    lines += [g for name, r in results["data"].items() for g in _goals(name, r)]
    return "\n".join(lines)


def _graph(c: dict[str, Any] | None) -> str:
    """A column's OpenZL choice: "layout:graph bytes"."""
    return "-" if c is None else f"{c['layout'][0]}:{c['setting']} {c['bytes_alone']:,}"


def _rate(speeds: tuple[float, float] | None) -> str:
    """(compress, decompress) states/s as "c / d" in thousands (one decimal below 10k)."""
    if speeds is None:
        return "-"
    c, d = (s / 1e3 for s in speeds)
    return " / ".join(format(v, ",.1f" if v < 10 else ",.0f") for v in (c, d))


def _features(results: dict[str, Any]) -> list[str]:
    """Every feature named in the OpenZL columns, first-seen order."""
    seen: dict[str, None] = {}
    for _, r, s in _columns(results):
        seen.update(dict.fromkeys(_get(r, "anchors", s, *OPENZL_BEST, "columns") or {}))
    return list(seen)


def _whole_db_table(results: dict[str, Any]) -> str:
    """Whole-database anchors per data set: bits per agent state and MB/s."""
    lines = [
        "whole database, exact: bits per agent state (all agents); file tools with MB/s of "
        "SQLite file, compress / decompress"
    ]
    for name, r in results["data"].items():
        w = r["whole_db"]
        lines.append(
            f"{name}: {w['file_bytes'] / 1e6:.2f} MB, {w['agent_states_rows']:,} agent states"
        )
        for tool in ("zstd-19", "xz-9"):
            t = w[tool]
            lines.append(
                f"  {tool:<8} {t['bits_per_state']:>8.1f} bits/state ({t['bytes']:,} bytes, "
                f"{t['ratio_to_file']:.3f} of the file), {t['compress_mb_per_s']:.2f} / "
                f"{t['decompress_mb_per_s']:.1f} MB/s"
            )
        p = w["parquet_zstd19"]
        per_table = ", ".join(f"{t} {v['bits_per_state']:.1f}" for t, v in p["tables"].items())
        lines.append(
            f"  Parquet+zstd-19 of every table {p['bits_per_state']:.1f} bits/state "
            f"({p['bytes']:,} bytes): {per_table}"
        )
    return "\n".join(lines)


def _goals(name: str, r: dict[str, Any]) -> list[str]:
    """The goal lines: the default coder against OpenZL; the trained codec, when trained."""
    lines = []
    for key, split in (("default", "test"), ("default_whole_db", "all")):
        if key not in r:
            continue
        d = r[key]
        lines.append(
            f"{name} {split}: default coder + its header share / (OpenZL + keys) = "
            f"{_cell(SHARE_RATIO(r, split), '.3f')} "
            f"(<= 0.7); verified: {d['verified_states']:,} of {d['states']:,} states, "
            f"{d['verified_tables']} tables, {d['verified_rows']:,} rows"
        )
    if "codec" in r:
        q, dl = r["quantizer"]["coded_bits_per_state"], r["delta"]["coded_bits_per_state"]
        verified = all(r[k]["verified_states"] == r["test_states"] for k in VARIANTS)
        lines.append(
            f"{name} test: codec / quantizer = "
            f"{r['codec']['features_bits_per_state'] / q:.3f} (<= 1); "
            f"codec+prev / delta = {r['codec_prev']['features_bits_per_state'] / dl:.2f}, "
            f"codec+hist / delta = {r['codec_hist']['features_bits_per_state'] / dl:.2f} "
            f"(<= 0.8); verified, drift 0: {verified}"
        )
    return lines


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", choices=[*REAL, "synthetic"], default=[*REAL, "synthetic"])
    p.add_argument("--synthetic-states", type=int, default=1_000_000)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--synthetic-epochs", type=int, default=10)
    p.add_argument("--synthetic-batch-size", type=int, default=1024)
    p.add_argument("--out", default="codec", help="results name: benchmarks/results/<out>.json")
    p.add_argument("--no-whole-db", dest="whole_db", action="store_false")
    p.add_argument(
        "--no-train",
        "--anchors-only",
        dest="no_train",
        action="store_true",
        help="no training: the default coder, the anchors (features, keys, whole database), zstd",
    )
    args = p.parse_args()
    logging.getLogger("meaning_transform").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
        "args": vars(args),
        "packages": package_versions(),
        "data": {},
    }
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
            what = "default coder and anchors" if args.no_train else "training, coding, anchors"
            print(f"{name}: {what} ...", flush=True)
            results["data"][name] = bench(
                name if "synthetic" not in name else "synthetic", db, args, work
            )
    print(table(results))
    write_results(args.out, results)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the anchors' packages (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("openzl", "numcodecs-wasm-sz3", "pcodec", "zfpy", "zstandard", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    main()
