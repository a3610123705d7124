"""A table's rows read in order and written back, exactly: the SQL side of the table coder.

Rows are read in rowid order with their rowids (a rowid table), in primary-key order (WITHOUT
ROWID), or in table order when every rowid name is taken by a column (such a table gets rowids
1, 2, ... back: the only rowids not preserved). Generated columns are not stored (SQLite
recomputes them). TEXT is read as its bytes (``surrogateescape``), so text that is not valid
UTF-8 comes back byte for byte: written with ``CAST(? AS TEXT)`` (exact in a UTF-8 database).
All table and column names are quoted by the codec; the table must exist in the database
written to (its CREATE replayed through ``SchemaGuard``), and its columns are read from there.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from meaning_transform.codec.sql_guard import quote
from meaning_transform.codec.wire import BlockError
from meaning_transform.errors import DataError

_ROWID_NAMES = ("rowid", "oid", "_rowid_")


@dataclass(frozen=True)
class TableLayout:
    """Which columns a table stores, the name its rowids are read by, and the reading order."""

    name: str
    columns: tuple[str, ...]
    rowid: str | None
    order: tuple[str, ...]

    def select(self) -> str:
        """The query that reads every row (rowid first when there is one) in order."""
        names = ([self.rowid] if self.rowid else []) + list(self.columns)
        cols = ", ".join(map(quote, names)) if names else "NULL"
        order = " ORDER BY " + ", ".join(map(quote, self.order)) if self.order else ""
        scan = "" if self.order else " NOT INDEXED"  # table order without an ORDER BY
        return f"SELECT {cols} FROM {quote(self.name)}{scan}{order}"

    def insert(self, cast: Sequence[bool] = ()) -> str:
        """The statement that writes one row (``cast``: columns bound as bytes to be TEXT)."""
        names = ([self.rowid] if self.rowid else []) + list(self.columns)
        marks = ["CAST(? AS TEXT)" if c else "?" for c in cast] or ["?"] * len(names)
        return (
            f"INSERT INTO {quote(self.name)} ({', '.join(map(quote, names))}) "
            f"VALUES ({', '.join(marks)})"
        )


def table_layout(con: sqlite3.Connection, table: str) -> TableLayout:
    """``table``'s layout in ``con`` (``DataError`` if there is no such table)."""
    info = con.execute("SELECT name, pk, hidden FROM pragma_table_xinfo(?)", (table,)).fetchall()
    if not info:
        raise DataError(f"table {table!r} does not exist")
    columns = tuple(name for name, _, hidden in info if hidden == 0)
    taken = {c.lower() for c, _, _ in info}
    rowid = next((r for r in _ROWID_NAMES if r not in taken), None)
    if rowid is not None:
        try:
            con.execute(f"SELECT {rowid} FROM {quote(table)} LIMIT 0")
        except sqlite3.OperationalError:  # WITHOUT ROWID
            rowid = None
    if rowid is not None:
        order: tuple[str, ...] = (rowid,)
    else:
        order = tuple(name for name, pk, _ in sorted(info, key=lambda r: r[1]) if pk)
    return TableLayout(table, columns, rowid, order)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def read_batches(
    con: sqlite3.Connection, layout: TableLayout, batch: int
) -> Iterator[list[tuple[Any, ...]]]:
    """The table's rows, ``batch`` at a time, TEXT decoded with ``surrogateescape``."""
    return batches(con, layout.select(), batch, _text)


def batches(
    con: sqlite3.Connection, sql: str, size: int, text_factory: Callable[[bytes], Any]
) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of ``sql``, ``size`` at a time, TEXT through ``text_factory`` (set on ``con``
    only while rows are fetched: the caller's own factory is back between batches)."""
    saved = con.text_factory
    con.text_factory = text_factory
    try:
        cur = con.execute(sql)
    finally:
        con.text_factory = saved
    try:
        while True:
            con.text_factory = text_factory
            try:
                rows = cur.fetchmany(size)
            finally:
                con.text_factory = saved
            if not rows:
                return
            yield rows
    finally:
        cur.close()


def write_rows(con: sqlite3.Connection, layout: TableLayout, rows: list, where: str) -> None:
    """Insert ``rows`` (one savepoint; ``DataError`` naming ``where`` if SQLite refuses one)."""
    con.execute("SAVEPOINT mt_rows")
    try:
        try:
            con.executemany(layout.insert(), rows)
        except UnicodeEncodeError:  # text that is not UTF-8: row by row, those cells as bytes
            con.execute("ROLLBACK TO mt_rows")
            for row in rows:
                _write_row(con, layout, row, where)
    except (sqlite3.Error, OverflowError) as e:
        con.execute("ROLLBACK TO mt_rows")
        con.execute("RELEASE mt_rows")
        raise BlockError(f"{where}: a row cannot be written ({str(e)[:200]})") from None
    con.execute("RELEASE mt_rows")


def _write_row(con: sqlite3.Connection, layout: TableLayout, row: tuple, where: str) -> None:
    cast = [isinstance(v, str) and not _utf8(v) for v in row]
    if not any(cast):
        con.execute(layout.insert(), row)
        return
    try:
        values = [
            v.encode("utf-8", "surrogateescape") if c else v for v, c in zip(row, cast, strict=True)
        ]
    except UnicodeEncodeError:
        raise BlockError(f"{where}: a text value is neither UTF-8 nor bytes") from None
    con.execute(layout.insert(cast), values)


def _utf8(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True
