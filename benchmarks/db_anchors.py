"""Whole-database anchors (exact): what general tools make of a whole simulation.db.

- ``file_anchors``: ``zstd -19`` and ``xz -9`` of the database file, in process
  (``zstandard`` level 19; ``lzma`` preset 9, the xz format with its CRC64 as the xz command
  writes), with compress and decompress throughput in MB (10^6 bytes) of SQLite file per
  second; each decompressed file is checked byte for byte.
- ``parquet_anchor``: every table (``sqlite_master`` type ``table``) as its own Parquet file
  with zstd level 19, read back and compared value by value, SQLite storage class included.
  A column whose values do not come back with their types (mixed storage classes) is
  stored as tagged text instead (``"i:1"``, ``"r:2.5"``, ``"t:..."``, ``"b:<hex>"``); its
  name is listed. Bytes per table and in total.

Sizes are also given as bits per agent state: bytes * 8 / rows of ``agent_states``.
"""

from __future__ import annotations

import io
import lzma
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

ZSTD_LEVEL = 19
XZ_PRESET = 9


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection to ``path`` (the source is never written)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def quote(name: str) -> str:
    """``name`` as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def agent_states_rows(path: Path) -> int:
    """Rows of ``agent_states`` (what bits per agent state divide by)."""
    with closing(connect_ro(path)) as con:
        return int(con.execute("SELECT count(*) FROM agent_states").fetchone()[0])


def file_anchors(path: Path, states: int) -> dict[str, Any]:
    """zstd -19 and xz -9 of the file at ``path``: bytes, bits per state, MB/s."""
    data = Path(path).read_bytes()
    coders = {
        "zstd-19": (
            lambda b: zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(b),
            lambda b: zstandard.ZstdDecompressor().decompress(b, max_output_size=len(data)),
        ),
        "xz-9": (
            lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, preset=XZ_PRESET),
            lambda b: lzma.LZMADecompressor().decompress(b, max_length=len(data)),
        ),
    }
    out: dict[str, Any] = {"file_bytes": len(data)}
    for name, (compress, decompress) in coders.items():
        t = time.perf_counter()
        blob = compress(data)
        c_s = time.perf_counter() - t
        t = time.perf_counter()
        back = decompress(blob)
        d_s = time.perf_counter() - t
        if back != data:
            raise AssertionError(f"{name} of {path} does not give the file back")
        out[name] = {
            "bytes": len(blob),
            "bits_per_state": 8 * len(blob) / states,
            "ratio_to_file": len(blob) / len(data),
            "compress_seconds": c_s,
            "decompress_seconds": d_s,
            "compress_mb_per_s": len(data) / 1e6 / c_s,
            "decompress_mb_per_s": len(data) / 1e6 / d_s,
        }
    return out


def tables(con: sqlite3.Connection) -> list[str]:
    """Names of every table in the database, in ``sqlite_master`` order."""
    return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


def _tagged(value: Any) -> str | None:
    """A value of any SQLite storage class as text that names the class."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return "b:" + value.hex()
    return {int: "i:", float: "r:", str: "t:"}[type(value)] + (
        value.hex() if isinstance(value, float) else str(value)
    )


def _untagged(text: str | None) -> Any:
    """Inverse of ``_tagged``."""
    if text is None:
        return None
    tag, body = text[:2], text[2:]
    return {
        "b:": bytes.fromhex,
        "i:": int,
        "r:": float.fromhex,
        "t:": str,
    }[tag](body)


def _same(a: list[Any], b: list[Any]) -> bool:
    """Equal values of equal SQLite storage classes (1 is not 1.0)."""
    return len(a) == len(b) and all(
        type(x) is type(y) and (x == y) for x, y in zip(a, b, strict=True)
    )


def _arrow_column(values: list[Any]) -> tuple[pa.Array, bool]:
    """An Arrow array that gives ``values`` back exactly; (array, whether tagged text)."""
    try:
        arr = pa.array(values)
        if _same(arr.to_pylist(), values):
            return arr, False
    except (pa.ArrowException, OverflowError):
        pass
    return pa.array([_tagged(v) for v in values], type=pa.string()), True


def parquet_anchor(path: Path, states: int) -> dict[str, Any]:
    """Every table as Parquet + zstd -19: bytes per table and in total, checked exact."""
    out: dict[str, Any] = {"tables": {}}
    total = c_total = d_total = 0.0
    with closing(connect_ro(path)) as con:
        for table in tables(con):
            cur = con.execute(f"SELECT * FROM {quote(table)}")
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
            columns = [[r[i] for r in rows] for i in range(len(names))]
            t = time.perf_counter()
            built = [_arrow_column(c) for c in columns]
            arrow = pa.table({n: a for n, (a, _) in zip(names, built, strict=True)})
            buf = io.BytesIO()
            pq.write_table(
                arrow,
                buf,
                compression="zstd",
                compression_level=ZSTD_LEVEL,
                store_schema=False,  # the Arrow schema copy is not needed to read it back
            )
            c_s = time.perf_counter() - t
            blob = buf.getvalue()
            t = time.perf_counter()
            back = pq.read_table(io.BytesIO(blob))
            decoded = [
                [_untagged(v) for v in back.column(i).to_pylist()]
                if tagged
                else back.column(i).to_pylist()
                for i, (_, tagged) in enumerate(built)
            ]
            d_s = time.perf_counter() - t
            for name, a, b in zip(names, columns, decoded, strict=True):
                if not _same(a, b):
                    raise AssertionError(f"Parquet of {table}.{name} does not give it back")
            out["tables"][table] = {
                "rows": len(rows),
                "bytes": len(blob),
                "bits_per_state": 8 * len(blob) / states,
                "tagged_columns": [
                    n for n, (_, tagged) in zip(names, built, strict=True) if tagged
                ],
            }
            total += len(blob)
            c_total += c_s
            d_total += d_s
    out.update(
        bytes=int(total),
        bits_per_state=8 * total / states,
        compress_seconds=c_total,
        decompress_seconds=d_total,
    )
    return out


def db_anchors(path: Path) -> dict[str, Any]:
    """Every whole-database anchor of ``path``."""
    states = agent_states_rows(path)
    return {
        "agent_states_rows": states,
        **file_anchors(path, states),
        "parquet_zstd19": parquet_anchor(path, states),
    }
