"""Any table of a database as a sequence of independently decodable blocks of rows, and back.

A block holds up to ``block_rows`` rows (and at most ``BLOCK_BYTES`` of text and blobs): their
rowids, then each column, coded by type or given the columns before it (``conditioned``: an
INTEGER PRIMARY KEY is its rowid, a JSON template follows from ``action_type``). Memory is flat in the
table's size: one block is read, coded and dropped at a time, and decoding one is bounded by
the format's limits (``block_io.MAX_CELLS``, ``backend``'s size bounds) whatever the bytes
claim.

Plan of a block: format | rows | columns | has rowids | rowids | the order the columns are coded
in (``lags.coding_order``) | per column in that order: whether it is on a tolerance grid, then
its values.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from meaning_transform.codec.block_io import MAX_CELLS, Sink, Source
from meaning_transform.codec.conditioned import put_column, take_column
from meaning_transform.codec.context import Context, Factors
from meaning_transform.codec.lags import coding_order
from meaning_transform.codec.numbers import put_ints, take_ints
from meaning_transform.codec.schema_objects import SQLITE_TABLES, prepare_sqlite_table
from meaning_transform.codec.table_rows import TableLayout, read_batches, table_layout, write_rows
from meaning_transform.errors import ConfigError

FORMAT = 1
BLOCK_ROWS = 1 << 16
BLOCK_BYTES = 1 << 26
MAX_BLOCK_ROWS = 1 << 20
_READ_BATCH = 4096


def flat_tolerances(tolerances: Mapping[str, Any] | None) -> dict[str, float]:
    """Declared tolerances as ``{"table.column": t}``, from that form or the nested one
    (``{table: {column: t}}``, as YAML writes it), every value checked (``ConfigError``)."""
    out: dict[str, float] = {}
    for key, t in (tolerances or {}).items():
        if isinstance(t, Mapping):
            for column, u in t.items():
                out.update(flat_tolerances({f"{key}.{column}": u}))
            continue
        table, dot, column = str(key).rpartition(".")
        if not dot or not table or not column:
            raise ConfigError(f"tolerances: {key!r} is not table.column")
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"tolerances: {key}={t!r} is not a positive number")
        out[str(key)] = float(t)
    return out


def column_tolerances(tolerances: Mapping[str, Any] | None, table: str) -> dict[str, float]:
    """The declared tolerances of ``table``'s columns: ``{column: t}``."""
    return {
        key.rpartition(".")[2]: t
        for key, t in flat_tolerances(tolerances).items()
        if key.rpartition(".")[0] == table
    }


def encode_table(
    con: sqlite3.Connection,
    table: str,
    tolerances: Mapping[str, Any] | None = None,
    block_rows: int = BLOCK_ROWS,
) -> Iterator[bytes]:
    """``table``'s rows as blocks (none for an empty table); REAL values of columns with a
    declared tolerance (``{"table.column": t}``) within it, everything else exact."""
    if not isinstance(block_rows, int) or not 1 <= block_rows <= MAX_BLOCK_ROWS:
        raise ConfigError(f"block_rows must be an integer in 1..{MAX_BLOCK_ROWS}")
    layout = table_layout(con, table)
    tol = column_tolerances(tolerances, table)
    unknown = set(tol) - set(layout.columns)
    if unknown:
        raise ConfigError(f"tolerance for {table}.{sorted(unknown)[0]}: no such column")
    width = len(layout.columns) + (layout.rowid is not None)
    limit = max(1, min(block_rows, MAX_CELLS // (4 * width)))
    pending: list[tuple[Any, ...]] = []
    size = 0
    for batch in read_batches(con, layout, min(_READ_BATCH, limit)):
        pending.extend(batch)
        size += _text_bytes(batch)
        if len(pending) >= limit or size >= BLOCK_BYTES:
            n = min(len(pending), limit)
            yield encode_block(layout, pending[:n], tol)
            pending = pending[n:]
            size = _text_bytes(pending)
    if pending:
        yield encode_block(layout, pending, tol)


def _text_bytes(rows: list[tuple[Any, ...]]) -> int:
    return sum(len(v) for row in rows for v in row if type(v) in (str, bytes))


def encode_block(
    layout: TableLayout, rows: Sequence[tuple[Any, ...]], tolerances: Mapping[str, float]
) -> bytes:
    """One block of ``layout``'s rows (as ``table_rows.read_batches`` gives them)."""
    sink = Sink()
    has_rowid = layout.rowid is not None
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else []
    sink.plan.uint(FORMAT)
    sink.plan.uint(len(rows))
    sink.plan.uint(len(layout.columns))
    sink.plan.uint(int(has_rowid))
    context = Context(len(rows))
    if has_rowid:
        put_ints(sink, np.array(columns[0], dtype=np.int64))
        context.add(columns[0])
    values = columns[int(has_rowid) :]
    factors = [Factors(v) for v in values]
    order = coding_order(factors) if rows else []
    for j in order:
        sink.plan.uint(j)
    for j in order:
        tolerance = tolerances.get(layout.columns[j])
        sink.plan.uint(tolerance is not None)
        put_column(sink, values[j], tolerance, context, factors=factors[j])
        if tolerance is None:
            context.add(values[j], factors[j])
        else:  # its decoded values differ from these: later columns must not be coded given it
            context.add([None] * len(rows))
    return sink.tobytes()


def decode_block(data: bytes, layout: TableLayout, where: str) -> list[tuple[Any, ...]]:
    """The rows of one block of ``layout``'s table (``BlockError``, one line, if it is not one)."""
    src = Source(data, where)
    plan = src.plan
    if plan.uint(FORMAT, "the block format") != FORMAT:
        raise src.fail(f"block format is not {FORMAT}")
    n = plan.uint(MAX_BLOCK_ROWS, "the number of rows")
    ncols = plan.uint(len(layout.columns), "the number of columns")
    has_rowid = plan.uint(1, "the rowid flag")
    if ncols != len(layout.columns) or has_rowid != (layout.rowid is not None):
        raise src.fail(f"its columns are not those of table {layout.name!r}")
    src.count(n * (ncols + has_rowid))
    context = Context(n)
    rowids = []
    if has_rowid:
        rowids.append(take_ints(src, n).tolist())
        context.add(rowids[0])
    order = [plan.uint(max(ncols - 1, 0), "a column number") for _ in range(ncols if n else 0)]
    if sorted(order) != list(range(len(order))):
        raise src.fail("its column order is not a permutation")
    values: list[list[Any]] = [[] for _ in range(ncols)]
    for j in order:
        on_grid = plan.uint(1, "a tolerance flag")
        values[j] = take_column(src, n, context)
        context.add([None] * n if on_grid else values[j])
    src.end()
    columns = rowids + values
    return list(zip(*columns, strict=True)) if n else []


def restore_table(
    con: sqlite3.Connection, table: str, blobs: Iterable[bytes], where: str = "table"
) -> int:
    """Insert the rows of ``blobs`` (``encode_table``'s, in order) into ``table``, which must
    exist in ``con`` (created from the source's SQL); returns the number of rows."""
    if table in SQLITE_TABLES:
        prepare_sqlite_table(con, table, where)
    layout = table_layout(con, table)
    rows = 0
    for i, blob in enumerate(blobs, start=1):
        at = f"{where}: table {table!r}, block {i}"
        block = decode_block(blob, layout, at)
        write_rows(con, layout, block, at)
        rows += len(block)
    return rows
