"""Every table of the shared databases through the table coder, beside Parquet+zstd-19.

Per table: rows, our bytes and bits per agent state (exact: every cell, storage class included;
restored into a new database and compared cell by cell), Parquet+zstd-19 of the same table
(``pq.write_table(..., compression="zstd", compression_level=19)``), the ratio, and encode /
decode throughput in MB of the table's SQLite pages (``dbstat``) per CPU second (the coder runs
in one thread; CPU time, because the machine is shared). ``agent_states``
is listed for reference (coded here exactly by the generic coder; the learned codec codes it),
and left out of the totals. Then the keys of ``agent_states`` as the learned codec's chunks
carry them (``state_keys``, one 131,072-state chunk, given the agents table's ids), and what
each transform saves (the encoder run again with that transform switched off).

    nice -n 10 python benchmarks/tables.py              # both shared databases
    python benchmarks/tables.py --no-ablations          # the main table only

Prints the tables and writes benchmarks/results/tables.json.
"""

from __future__ import annotations

import argparse
import io
import platform
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402

from meaning_transform.codec import backend, conditioned, numbers, typed  # noqa: E402
from meaning_transform.codec import tables as table_coder  # noqa: E402
from meaning_transform.codec.compare import compare_table  # noqa: E402
from meaning_transform.codec.schema_objects import (  # noqa: E402
    carried_tables,
    create_tables,
    schema_objects,
)
from meaning_transform.codec.sql_guard import SchemaGuard  # noqa: E402
from meaning_transform.codec.state_keys import encode_state_keys  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATABASES = {
    "run1": SHARED / "agentfarm_run1.db",
    "run3_moving": SHARED / "agentfarm_run3_moving.db",
}
STATES = "agent_states"


def _open(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def parquet_bytes(con: sqlite3.Connection, table: str) -> int:
    """Parquet+zstd-19 of ``table`` (a column of mixed storage classes as text)."""
    cur = con.execute(f'SELECT * FROM "{table}"')
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    columns = {}
    for i, name in enumerate(names):
        values = [r[i] for r in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else str(v) for v in values])
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, compression="zstd", compression_level=19)
    return len(buf.getvalue())


def page_bytes(con: sqlite3.Connection, table: str) -> int:
    """Bytes of ``table``'s own pages in the file (``dbstat``)."""
    row = con.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ?", (table,)).fetchone()
    return int(row[0] or 0)


def code_table(con: sqlite3.Connection, objects: list, table: str) -> dict[str, Any]:
    """Encode, restore into a fresh database, compare; sizes and times."""
    start = time.process_time()  # CPU seconds: the machine is shared, the coder one thread
    blocks = list(table_coder.encode_table(con, table))
    encode_s = time.process_time() - start
    with closing(sqlite3.connect(":memory:")) as out:
        guard = SchemaGuard(out, "benchmark")
        create_tables(guard, [o for o in objects if o.kind == "table" and o.name == table])
        guard.close()
        start = time.process_time()
        table_coder.restore_table(out, table, blocks)
        decode_s = time.process_time() - start
        out.commit()
        compare_table(con, out, table)
    return {"bytes": sum(map(len, blocks)), "blocks": len(blocks), "encode_s": encode_s,
            "decode_s": decode_s}  # fmt: skip


def keys_bytes(con: sqlite3.Connection, chunk: int = 131072) -> int:
    """``agent_states``' non-feature columns as the learned codec's chunks carry them."""
    cols = [r[1] for r in con.execute(f"SELECT * FROM pragma_table_info('{STATES}')")]
    others = [c for c in ("position_z", "starting_health") if c in cols]
    keys = [c for c in ("id", "simulation_id", "step_number", "agent_id") if c in cols]
    known = {
        "agent_id": [r[0] for r in con.execute("SELECT agent_id FROM agents ORDER BY rowid")],
        "simulation_id": [
            r[0] for r in con.execute("SELECT simulation_id FROM simulations ORDER BY rowid")
        ],
    }
    cur = con.execute(
        f"SELECT {', '.join(keys + others)} FROM {STATES} ORDER BY agent_id, step_number"
    )
    total = 0
    while rows := cur.fetchmany(chunk):
        columns = [list(c) for c in zip(*rows, strict=True)]
        k = dict(zip(keys, columns[: len(keys)], strict=True))
        o = dict(zip(others, columns[len(keys) :], strict=True))
        total += len(encode_state_keys(k, o, known))
    return total


# ---------------------------------------------------------------- ablations
def _off_json(sink, texts, context, coder):  # TEXT always as strings
    return _PLAIN_TEXTS(sink, texts, context, None)


_PLAIN_TEXTS = typed._put_texts


@contextmanager
def patched(pairs: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Replace attributes for the duration (measurement only: the codec has no such switches)."""
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in pairs]
    for obj, name, value in pairs:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def _none(*_: Any, **__: Any) -> list:
    return []


def _natural_order(columns: list) -> list[int]:
    return list(range(len(columns)))


ABLATIONS: dict[str, Callable[[], list[tuple[Any, str, Any]]]] = {
    "no JSON fields (details as text)": lambda: [(typed, "_put_texts", _off_json)],
    "no CODED (entropy-coded given a column)": lambda: [(conditioned, "_coded", _none)],
    "no LAG, SUM, DIFF (predictions)": lambda: [(conditioned, "_predictions", _none)],
    "no SERIES (per-entity differences)": lambda: [(conditioned, "series_options", _none)],
    "no coding order": lambda: [(table_coder, "coding_order", _natural_order)],
    "floats: no DECIMAL": lambda: [(numbers, "_decimal_option", _bits_option)],
    "backend: zstd-19 only": lambda: [(backend, "compress", _zstd_only)],
}


def _zstd_only(raw, methods=None):
    return _COMPRESS(raw, (backend.ZSTD,))


_COMPRESS = backend.compress


def _bits_option(x):
    return numbers._option(numbers.F_BITS, numbers._bits(x))


def run_db(name: str, path: Path, ablations: bool) -> dict[str, Any]:
    with closing(_open(path)) as con:
        objects = schema_objects(con)
        states = con.execute(f"SELECT count(*) FROM {STATES}").fetchone()[0]
        rows: list[dict[str, Any]] = []
        for table in carried_tables(objects):
            n = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            r = {"table": table, "rows": n, **code_table(con, objects, table)}
            r["parquet_bytes"] = parquet_bytes(con, table)
            r["page_bytes"] = page_bytes(con, table)
            rows.append(r)
        keys = keys_bytes(con)
        result: dict[str, Any] = {"states": states, "tables": rows, "keys_bytes": keys}
        if ablations:
            base = sum(r["bytes"] for r in rows if r["table"] != STATES)
            result["ablations"] = {}
            for label, pairs in ABLATIONS.items():
                with patched(pairs()):
                    size = sum(
                        sum(map(len, table_coder.encode_table(con, r["table"])))
                        for r in rows
                        if r["table"] != STATES
                    )
                result["ablations"][label] = {"bytes": size, "extra_bytes": size - base}
    return result


def report(name: str, res: dict[str, Any]) -> None:
    n = res["states"]
    print(f"\n{name}: {n:,} agent states")
    head = f"{'table':20s} {'rows':>7s} {'ours B':>8s} {'bits/st':>8s} {'parquet B':>9s} "
    print(head + f"{'bits/st':>8s} {'ratio':>6s} {'enc MB/s':>8s} {'dec MB/s':>8s}  (per CPU s)")
    ours = pq_total = 0
    for r in res["tables"]:
        mb = r["page_bytes"] / 1e6
        enc = mb / r["encode_s"] if r["encode_s"] else 0.0
        dec = mb / r["decode_s"] if r["decode_s"] else 0.0
        ratio = r["bytes"] / r["parquet_bytes"]
        flag = "*" if r["table"] == STATES else " "
        print(
            f"{r['table'] + flag:20s} {r['rows']:7,d} {r['bytes']:8,d} {8 * r['bytes'] / n:8.2f} "
            f"{r['parquet_bytes']:9,d} {8 * r['parquet_bytes'] / n:8.2f} {ratio:6.3f} "
            f"{enc:8.2f} {dec:8.2f}"
        )
        if r["table"] != STATES:
            ours += r["bytes"]
            pq_total += r["parquet_bytes"]
    print(
        f"{'all but agent_states':20s} {'':7s} {ours:8,d} {8 * ours / n:8.2f} {pq_total:9,d} "
        f"{8 * pq_total / n:8.2f} {ours / pq_total:6.3f}"
    )
    print("* exact, by the generic coder (the learned codec codes agent_states' features)")
    print(f"agent_states keys and other columns (state_keys, given the agents' ids): "
          f"{res['keys_bytes']:,} B = {8 * res['keys_bytes'] / n:.3f} bits/state")  # fmt: skip
    if "ablations" in res:
        print("transform switched off        bytes (all but agent_states)   extra bits/state")
        for label, a in res["ablations"].items():
            print(f"  {label:42s} {a['bytes']:9,d} {8 * a['extra_bytes'] / n:+8.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-ablations", action="store_true")
    args = p.parse_args()
    results: dict[str, Any] = {"machine": platform.platform(), "python": platform.python_version()}
    for name, path in DATABASES.items():
        if not path.exists():
            print(f"{path} not present: skipped")
            continue
        results[name] = run_db(name, path, not args.no_ablations)
        report(name, results[name])
    write_results("tables", results)


if __name__ == "__main__":
    main()
