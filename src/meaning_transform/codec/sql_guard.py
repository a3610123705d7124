"""SQL read from a file is replayed only as the single CREATE statement it claims to be.

A ``.mtc`` file carries the source database's schema as SQL text (``sqlite_master.sql``). A
crafted file could put anything there (``VACUUM INTO '/any/path'``, ``ATTACH``, a ``PRAGMA``, a
``CREATE TABLE ... AS SELECT``), so before a statement touches the output database
``SchemaGuard`` runs it through SQLite's own parser on an in-memory scratch database, under an
authorizer that allows exactly one thing: creating the named object of the expected kind (and
the bookkeeping SQLite does for it in ``sqlite_master``). Everything else is denied, and the
scratch schema must then have gained exactly that object. Only then is the same text run on the
output database, under the same authorizer.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

from meaning_transform.errors import DataError

#: sqlite3.h authorizer action codes (the sqlite3 module's constants of the same value are
#: shadowed by error codes of equal number, so they are spelled out here)
_CREATE = {"index": 1, "table": 2, "trigger": 7, "view": 8}
_INSERT, _READ, _UPDATE, _REINDEX, _FUNCTION = 18, 20, 23, 27, 31
KINDS = tuple(_CREATE)
#: longest CREATE statement accepted (SQLite's own default limit is 1e9; real schemas are KB)
MAX_SQL = 1 << 20
_MASTER = "sqlite_master"


class UnsafeSQL(DataError):
    """A statement from a file is not the single CREATE statement it claims to be."""


def quote(name: str) -> str:
    """``name`` as an SQL identifier (double quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


class _Authorizer:
    """Allow creating one object (``kind``, ``name``) and nothing else."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        self.denied: str | None = None

    def __call__(self, action: int, arg1: Any, arg2: Any, db: Any, trigger: Any) -> int:
        if db not in (None, "main"):
            return self._deny(f"schema {db!r}")
        if action == _CREATE[self.kind] and arg1 == self.name:
            return sqlite3.SQLITE_OK
        if self.kind == "table" and _table_bookkeeping(action, arg1, arg2, self.name):
            return sqlite3.SQLITE_OK
        if action in (_INSERT, _UPDATE, _READ) and arg1 == _MASTER:
            return sqlite3.SQLITE_OK  # recording the new object
        if action == _READ and self.kind in ("index", "view", "trigger"):
            return sqlite3.SQLITE_OK  # an index or view names columns of existing tables
        if self.kind == "index" and (
            action == _FUNCTION or (action == _REINDEX and arg1 == self.name)
        ):
            return sqlite3.SQLITE_OK  # building the new index (expressions: built-ins only)
        return self._deny(f"action {action} on {arg1!r}")

    def _deny(self, what: str) -> int:
        self.denied = self.denied or what
        return sqlite3.SQLITE_DENY


def _table_bookkeeping(action: int, arg1: Any, arg2: Any, table: str) -> bool:
    """What SQLite itself does to create a table: the indexes of its UNIQUE and PRIMARY KEY
    constraints, AUTOINCREMENT's ``sqlite_sequence``, reading its own columns (CHECK)."""
    if action == _CREATE["index"]:
        return str(arg1).startswith(f"sqlite_autoindex_{table}_") and arg2 == table
    if action == _CREATE["table"]:
        return arg1 == "sqlite_sequence"
    return action == _READ and arg1 == table


def _objects(con: sqlite3.Connection) -> set[tuple[str, str, str]]:
    return {tuple(r) for r in con.execute(f"SELECT type, name, tbl_name FROM {_MASTER}")}


class SchemaGuard:
    """Replays untrusted CREATE statements into ``con``, each checked on a scratch copy of the
    schema first (statements must come in dependency order: a table before its indexes)."""

    def __init__(self, con: sqlite3.Connection, where: str) -> None:
        self.con, self.where = con, where
        self.scratch = sqlite3.connect(":memory:")

    def close(self) -> None:
        """Drop the scratch database."""
        self.scratch.close()

    def create(self, kind: Any, name: Any, table: Any, sql: Any) -> None:
        """Run ``sql`` on the output if it creates exactly object ``name`` of ``kind`` on
        ``table``; ``UnsafeSQL`` (one line, naming the object) otherwise."""
        what = f"{self.where}: schema object {str(name)[:80]!r}"
        if kind not in _CREATE:
            raise UnsafeSQL(f"{what} has kind {str(kind)[:20]!r}; expected one of {KINDS}")
        if not isinstance(name, str) or not isinstance(table, str) or not name or "\0" in name:
            raise UnsafeSQL(f"{what} has an invalid name")
        if name.lower().startswith("sqlite_"):
            raise UnsafeSQL(f"{what}: names starting with sqlite_ are SQLite's own")
        if not isinstance(sql, str) or not 0 < len(sql) <= MAX_SQL or "\0" in sql:
            raise UnsafeSQL(f"{what}: its SQL is not text of at most {MAX_SQL} characters")
        before = _objects(self.scratch)
        self._run(self.scratch, kind, name, sql, what)
        added = _objects(self.scratch) - before
        mine = {o for o in added if o[1] == name}
        extra = {o for o in added - mine if not _bookkeeping(o, name)}
        if mine != {(kind, name, table)} or extra:
            raise UnsafeSQL(
                f"{what}: its SQL does not create exactly that {kind} on {str(table)[:80]!r}"
            )
        self._run(self.con, kind, name, sql, what, checked=True)

    @staticmethod
    def _run(
        con: sqlite3.Connection, kind: str, name: str, sql: str, what: str, checked: bool = False
    ) -> None:
        """``sql`` under the authorizer. On the output (``checked``: it ran on the scratch copy),
        a failure that the authorizer did not cause is the output's (disk full, a size limit):
        raised as SQLite's own error, not blamed on the file."""
        guard = _Authorizer(kind, name)
        con.set_authorizer(guard)
        try:
            with closing(con.cursor()) as cur:
                cur.execute(sql)
        except (sqlite3.Error, sqlite3.Warning) as e:
            if checked and not guard.denied:
                raise
            reason = f"it needs {guard.denied}" if guard.denied else str(e).splitlines()[0]
            raise UnsafeSQL(
                f"{what}: refused to run its SQL ({reason}); only a single CREATE {kind.upper()} "
                "statement is replayed from a file"
            ) from None
        finally:
            con.set_authorizer(None)


def _bookkeeping(obj: tuple[str, str, str], name: str) -> bool:
    """Objects SQLite adds by itself beside a new table (autoindexes, sqlite_sequence)."""
    kind, obj_name, table = obj
    if kind == "index" and obj_name.startswith("sqlite_autoindex_") and table == name:
        return True
    return kind == "table" and obj_name == "sqlite_sequence"
