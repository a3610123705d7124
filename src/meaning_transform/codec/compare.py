"""Two databases compared object by object and cell by cell, by a read of their own.

Independent of the codec's decoder: both databases are read through ``sqlite3`` with every
column's ``typeof()`` beside its value, rows in rowid order (primary-key order for WITHOUT
ROWID tables), TEXT as bytes. Values must be equal and of the same storage class; REALs to the
bit (``-0.0`` is not ``0.0``), except in a column with a declared tolerance, where two numbers
may differ by at most that (and be INTEGER on one side, REAL on the other). The schema (``sqlite_master``'s type, name, table and SQL) and the
carried header values must match too. Memory is flat: rows are read in batches.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import closing
from typing import Any

from meaning_transform.codec.schema_objects import database_settings
from meaning_transform.codec.sql_guard import quote
from meaning_transform.codec.table_rows import batches, table_layout
from meaning_transform.codec.tables import column_tolerances

_BATCH = 4096
#: a REAL on the grid may sit a rounding error beyond the tolerance itself
_SLACK = 1 + 1e-9


def _within(u: Any, v: Any, what: str, tolerance: float) -> bool:
    """Whether two cells of a column with a declared tolerance agree: numbers within it, of
    either numeric storage class (a value on the grid may come back as REAL or INTEGER)."""
    if what == "storage class":
        return {u, v} <= {b"integer", b"real"}
    numbers = all(type(x) in (int, float) for x in (u, v))
    return numbers and abs(u - v) <= tolerance * _SLACK


class DatabasesDiffer(ValueError):
    """Two databases differ; the message names the first difference (one line)."""


def compare_databases(
    a: sqlite3.Connection,
    b: sqlite3.Connection,
    tolerances: Mapping[str, Any] | None = None,
    skip: Iterable[str] = (),
) -> dict[str, int]:
    """Raise ``DatabasesDiffer`` at the first difference between ``a`` and ``b`` (schema,
    header values, then each table's rows, tables named in ``skip`` excepted); returns the
    rows compared per table."""
    sa, sb = _schema(a), _schema(b)
    if sa != sb:
        first = sorted(sa ^ sb, key=lambda o: (o[1], o[0]))[0]
        side = "the first" if first in sa else "the second"
        raise DatabasesDiffer(f"schema object {first[0]} {first[1]!r} is only in {side} database")
    for key, value in database_settings(a).items():
        if database_settings(b)[key] != value:
            raise DatabasesDiffer(f"database {key} differs")
    skip = set(skip)
    counts = {}
    for kind, name, _, _ in sorted(sa):
        if kind == "table" and name not in skip:
            counts[name] = compare_table(a, b, name, tolerances)
    return counts


def _schema(con: sqlite3.Connection) -> set[tuple[Any, ...]]:
    return set(con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))


def _columns(con: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT name, type, pk, hidden FROM pragma_table_xinfo(?)", (table,)
    ).fetchall()


def compare_table(
    a: sqlite3.Connection,
    b: sqlite3.Connection,
    table: str,
    tolerances: Mapping[str, Any] | None = None,
) -> int:
    """Raise ``DatabasesDiffer`` at the first cell of ``table`` that differs between ``a`` and
    ``b`` (declared tolerances: ``{"table.column": t}`` or nested); returns the rows compared."""
    tolerances = column_tolerances(tolerances, table)
    cols = _columns(a, table)
    if cols != _columns(b, table):
        raise DatabasesDiffer(f"table {table!r}: columns differ")
    names = [c[0] for c in cols]
    layout = table_layout(a, table)
    lead = [quote(layout.rowid)] if layout.rowid else []
    select = ", ".join(lead + [f"typeof({quote(c)}), {quote(c)}" for c in names])
    order = " ORDER BY " + ", ".join(map(quote, layout.order)) if layout.order else ""
    scan = "" if layout.order else " NOT INDEXED"
    sql = f"SELECT {select} FROM {quote(table)}{scan}{order}"
    cells = [("rowid", "value")] * len(lead)
    cells += [(c, what) for c in names for what in ("storage class", "value")]
    tol = {i: tolerances[c] for i, (c, what) in enumerate(cells) if c in tolerances}
    with (
        closing(batches(a, sql, _BATCH, bytes)) as ca,
        closing(batches(b, sql, _BATCH, bytes)) as cb,
    ):
        return _compare_batches(table, cells, tol, ca, cb)


def _compare_batches(table, cells, tol, ca, cb) -> int:
    done = 0
    while True:
        ra, rb = next(ca, []), next(cb, [])
        for i, (x, y) in enumerate(zip(ra, rb, strict=False)):  # lengths checked below
            if x != y or 0.0 in x:
                _compare_row(table, cells, x, y, tol, done + i + 1)
        if len(ra) != len(rb):
            more = "first" if len(ra) > len(rb) else "second"
            raise DatabasesDiffer(f"table {table!r}: the {more} database has more rows")
        if not ra:
            return done
        done += len(ra)


def _compare_row(
    table: str, cells: list[tuple[str, str]], x: tuple, y: tuple, tol: dict[int, float], row: int
) -> None:
    for i, (u, v) in enumerate(zip(x, y, strict=True)):
        if (
            u == v
            and type(u) is type(v)
            and (type(u) is not float or math.copysign(1.0, u) == math.copysign(1.0, v))
        ):
            continue
        column, what = cells[i]
        if i in tol and _within(u, v, what, tol[i]):
            continue
        raise DatabasesDiffer(f"table {table!r}, column {column!r}, row {row}: {what} differs")
