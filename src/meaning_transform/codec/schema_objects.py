"""Every object of a database's schema, read in replay order and replayed through ``SchemaGuard``.

Replay order: tables first, then (the caller restores) rows, then indexes, views and triggers --
indexes are built once over all rows, and no trigger exists while rows are restored, so none
fires. Within a kind, objects keep ``sqlite_master``'s order (creation order).

What is carried and how:

- tables, indexes, views, triggers: their own SQL, replayed only through ``SchemaGuard`` (which
  refuses anything but the single CREATE statement claimed);
- automatic indexes (``sqlite_autoindex_*``, no SQL) come back with the table that makes them;
- ``sqlite_sequence`` (AUTOINCREMENT's counters) is created by SQLite with the first
  AUTOINCREMENT table; its rows are data and are restored exactly (they can exceed the largest
  rowid after deletions);
- ``sqlite_stat1`` / ``sqlite_stat4`` (``ANALYZE``'s statistics, which steer the query planner)
  are data too: created by ``ANALYZE sqlite_schema`` (SQL of the codec's, not of the file) and
  their rows restored exactly, so the restored database plans queries as the source did;
- any other ``sqlite_`` table (the obsolete ``sqlite_stat2``/``3``) and virtual tables
  (``CREATE VIRTUAL TABLE``: a module the reading machine may lack, which can read files) are
  refused at compress with one line rather than dropped;
- the header's ``encoding``, ``user_version`` and ``application_id`` (applications use the last
  two to recognise and migrate their files) are carried; page size, auto-vacuum and journal mode
  are storage details and take the reader's defaults.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from meaning_transform.codec.sql_guard import KINDS, SchemaGuard, quote
from meaning_transform.errors import DataError

#: SQLite's own tables whose rows are carried (restored after every other table's rows)
SQLITE_TABLES = ("sqlite_sequence", "sqlite_stat1", "sqlite_stat4")
_STAT_TABLES = SQLITE_TABLES[1:]
ENCODINGS = ("UTF-8", "UTF-16le", "UTF-16be")
_ORDER = {"table": 0, "index": 1, "view": 2, "trigger": 3}
MAX_NAME = 1 << 12


@dataclass(frozen=True)
class SchemaObject:
    """One row of ``sqlite_master``: kind, name, the table it belongs to, its SQL (or None)."""

    kind: str
    name: str
    table: str
    sql: str | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a file header."""
        return {"kind": self.kind, "name": self.name, "table": self.table, "sql": self.sql}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> SchemaObject:
        """Inverse of ``to_dict`` with every field's type checked (``DataError`` otherwise)."""
        if not isinstance(d, dict) or set(d) != {"kind", "name", "table", "sql"}:
            raise DataError(f"{where}: a schema object is not {{kind, name, table, sql}}")
        kind, name, table, sql = d["kind"], d["name"], d["table"], d["sql"]
        if kind not in KINDS:
            raise DataError(f"{where}: a schema object has kind {str(kind)[:20]!r}")
        for field, value in (("name", name), ("table", table)):
            check_name(value, f"{where}: a schema object's {field}")
        if sql is not None and not isinstance(sql, str):
            raise DataError(f"{where}: schema object {name[:80]!r} has SQL that is not text")
        return cls(kind, name, table, sql)

    @property
    def automatic(self) -> bool:
        """An index SQLite makes by itself (UNIQUE / PRIMARY KEY), or one of SQLite's tables."""
        return self.sql is None or self.name.lower().startswith("sqlite_")


def check_name(name: Any, what: str) -> str:
    """``name`` if it is a usable SQL name (text, no NUL, at most ``MAX_NAME`` characters)."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or "\0" in name:
        raise DataError(f"{what} is not a valid name ({str(name)[:80]!r})")
    return name


def schema_objects(con: sqlite3.Connection, where: str = "database") -> list[SchemaObject]:
    """Every object of ``con``'s main schema in replay order (tables, indexes, views, triggers);
    ``DataError`` for one the codec cannot carry (a virtual table, an unknown sqlite_ table)."""
    rows = con.execute(
        "SELECT type, name, tbl_name, sql, rootpage FROM sqlite_master ORDER BY rowid"
    ).fetchall()
    objects = []
    for kind, name, table, sql, rootpage in rows:
        obj = SchemaObject(kind, name, table, sql)
        if kind == "table" and not rootpage:
            raise DataError(f"{where}: virtual table {name!r} cannot be carried")
        if kind == "table" and name.lower().startswith("sqlite_") and name not in SQLITE_TABLES:
            raise DataError(f"{where}: SQLite table {name!r} cannot be carried")
        objects.append(obj)
    return sorted(objects, key=lambda o: _ORDER[o.kind])


def carried_tables(objects: list[SchemaObject]) -> list[str]:
    """Tables whose rows are carried, in restore order (SQLite's own tables last)."""
    tables = [o.name for o in objects if o.kind == "table"]
    return [t for t in tables if t not in SQLITE_TABLES] + [t for t in SQLITE_TABLES if t in tables]


def create_tables(guard: SchemaGuard, objects: list[SchemaObject]) -> None:
    """Replay every table's CREATE (SQLite's own tables come with the first that needs them)."""
    for o in objects:
        if o.kind == "table" and not o.automatic:
            guard.create(o.kind, o.name, o.table, o.sql)


def create_after_rows(guard: SchemaGuard, objects: list[SchemaObject]) -> None:
    """Replay indexes, views and triggers (after the rows are restored)."""
    for o in objects:
        if o.kind != "table" and not o.automatic:
            guard.create(o.kind, o.name, o.table, o.sql)


def prepare_sqlite_table(con: sqlite3.Connection, table: str, where: str) -> None:
    """Make SQLite's own ``table`` exist and empty, for its rows to be restored exactly."""
    if table not in SQLITE_TABLES:
        raise DataError(f"{where}: {table!r} is not a table SQLite lets the codec restore")
    if table in _STAT_TABLES:
        con.execute("ANALYZE sqlite_schema")
    exists = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,))
    if exists.fetchone() is None:
        raise DataError(f"{where}: this SQLite cannot create {table!r} (the source had it)")
    con.execute(f"DELETE FROM {quote(table)}")


def database_settings(con: sqlite3.Connection) -> dict[str, Any]:
    """The header values carried: text encoding, user_version, application_id."""
    return {
        "encoding": con.execute("PRAGMA encoding").fetchone()[0],
        "user_version": con.execute("PRAGMA user_version").fetchone()[0],
        "application_id": con.execute("PRAGMA application_id").fetchone()[0],
    }


def apply_settings(con: sqlite3.Connection, settings: Any, where: str) -> None:
    """Set ``database_settings`` on a new, empty database (before its first table)."""
    if not isinstance(settings, dict) or set(settings) != {
        "encoding",
        "user_version",
        "application_id",
    }:
        raise DataError(f"{where}: database settings are not {{encoding, user_version, ...}}")
    encoding = settings["encoding"]
    if encoding not in ENCODINGS:
        raise DataError(f"{where}: text encoding {str(encoding)[:20]!r} is not one of {ENCODINGS}")
    for key in ("user_version", "application_id"):
        v = settings[key]
        if type(v) is not int or not -(2**31) <= v < 2**31:
            raise DataError(f"{where}: {key} {str(v)[:20]!r} is not a 32-bit integer")
    con.execute(f"PRAGMA encoding = '{encoding}'")
    con.execute(f"PRAGMA user_version = {settings['user_version']}")
    con.execute(f"PRAGMA application_id = {settings['application_id']}")
