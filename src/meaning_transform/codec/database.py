"""A whole database's schema and tables, in the order compress and decompress do the work.

Compress: ``schema_objects`` and ``database_settings`` (small: the file header), then
``encode_tables`` gives each carried table's blocks. Decompress: ``restore_database`` applies
the settings, replays the tables' CREATE statements (``SchemaGuard``), restores the rows of
every table from its blocks, then replays indexes, views and triggers. A caller that codes a
table another way (``agent_states`` by the learned model) skips it here and writes its rows
itself after ``create_tables`` and before ``restore_rows`` (whose last tables are SQLite's
own, ``sqlite_sequence`` among them, restored after every other row is in).
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

from meaning_transform.codec.schema_objects import (
    SQLITE_TABLES,
    SchemaObject,
    apply_settings,
    carried_tables,
    create_after_rows,
    create_tables,
)
from meaning_transform.codec.sql_guard import SchemaGuard
from meaning_transform.codec.tables import BLOCK_ROWS, encode_table, restore_table
from meaning_transform.errors import DataError


def encode_tables(
    con: sqlite3.Connection,
    objects: list[SchemaObject],
    tolerances: Mapping[str, Any] | None = None,
    skip: Collection[str] = (),
    block_rows: int = BLOCK_ROWS,
) -> Iterator[tuple[str, bytes]]:
    """(table, block) for every carried table but those in ``skip``, in restore order."""
    for table in carried_tables(objects):
        if table not in skip:
            for block in encode_table(con, table, tolerances, block_rows):
                yield table, block


def restore_database(
    con: sqlite3.Connection,
    objects: list[SchemaObject],
    settings: Any,
    blocks: Iterable[tuple[str, bytes]],
    where: str,
) -> dict[str, int]:
    """Recreate a database in the new, empty ``con`` from its schema objects, settings and
    blocks (each table's blocks together, in ``encode_tables``' order); returns rows per
    table. Nothing from the file runs as SQL except CREATE statements ``SchemaGuard`` passes."""
    apply_settings(con, settings, where)
    guard = SchemaGuard(con, where)
    try:
        create_tables(guard, objects)
        rows = restore_rows(con, objects, blocks, where)
        create_after_rows(guard, objects)
    finally:
        guard.close()
    return rows


def restore_rows(
    con: sqlite3.Connection,
    objects: list[SchemaObject],
    blocks: Iterable[tuple[str, bytes]],
    where: str,
) -> dict[str, int]:
    """Insert every table's rows from ``blocks`` (the tables exist already)."""
    order = carried_tables(objects)
    rows: dict[str, int] = {}
    for table, group in itertools.groupby(blocks, key=lambda b: b[0]):
        if table not in order or table in rows:
            raise DataError(f"{where}: blocks of table {str(table)[:80]!r} are not expected here")
        if order.index(table) < max((order.index(t) for t in rows), default=-1):
            raise DataError(f"{where}: table {table!r} comes out of order")
        rows[table] = restore_table(con, table, (blob for _, blob in group), where)
    for table in order:  # SQLite's own tables exist (and are as empty) even with no rows
        if table in SQLITE_TABLES and table not in rows:
            rows[table] = restore_table(con, table, (), where)
    return rows
