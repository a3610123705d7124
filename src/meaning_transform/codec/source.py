"""The database side of the codec: a consistent snapshot to read, agent_states' columns split
for the model, and a writer that appends decoded rows.

``compress`` reads a snapshot of the source (``consistent_source``: SQLite's backup API in one
read transaction), never the live file; the source is opened read-only and never written.
``agent_states``' columns split into keys (``state_keys.KEY_COLUMNS``), the model's features
(features of the ``agents`` table, such as ``agent_type``, are looked up per state) and the
others, coded exactly. ``StatesWriter`` appends decoded chunks through ADBC in a background
thread (SQLite releases the GIL, so writing overlaps decoding).
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from meaning_transform.codec.sql_guard import quote
from meaning_transform.codec.state_keys import KEY_COLUMNS
from meaning_transform.data.sqlite import (
    AGENTS,
    BUSY_TIMEOUT_MS,
    DRIVER_ERRORS,
    STATES,
    adbc,
    check_sqlite_args,
    open_uri,
)
from meaning_transform.errors import DataError
from meaning_transform.schema import FeatureSchema


@dataclass
class Layout:
    """Which columns of ``agent_states`` are keys, coded features and others."""

    columns: list[str]  # agent_states columns in table order
    features: list[str]  # agent_states columns the model codes
    agent_features: list[str]  # features read from the agents table
    has_agents: bool

    @property
    def keys(self) -> list[str]:
        """Key columns present."""
        return [c for c in self.columns if c in KEY_COLUMNS]

    @property
    def others(self) -> list[str]:
        """Columns stored losslessly beside the model's code."""
        return [c for c in self.columns if c not in KEY_COLUMNS and c not in self.features]


def connect(path: str | Path) -> sqlite3.Connection:
    """Read-only connection to a database (DataError for a missing or non-SQLite file)."""
    file, _, _ = check_sqlite_args(path)
    try:
        con = sqlite3.connect(open_uri(file), uri=True)
        con.execute("PRAGMA busy_timeout = 10000")
        return con
    except sqlite3.Error as e:
        raise DataError(f"{file}: cannot open read-only as SQLite ({e})") from None


@contextmanager
def consistent_source(path: str | Path) -> Iterator[str]:
    """A path to read the database ``path`` from, all of it as of one moment: a snapshot copied
    by SQLite's backup API in one read transaction. Another process may be writing the source
    (a simulation still running, in WAL or rollback-journal mode, even one whose WAL file does
    not exist yet) and commit between two of our reads; the copy is ours alone. It takes disk
    space in the temp folder for as long as the command runs."""
    file, _, _ = check_sqlite_args(path)
    with tempfile.TemporaryDirectory(prefix="mt-snapshot-") as folder:
        copy = Path(folder) / "snapshot.db"
        try:
            with closing(_open_for_snapshot(file)) as src, closing(sqlite3.connect(copy)) as dst:
                src.backup(dst)
        except sqlite3.Error as e:
            raise DataError(f"{file}: cannot take a consistent snapshot to read ({e})") from None
        try:
            yield str(copy)
        except DataError as e:  # a reader names the file it read: the user's, not our copy
            if str(copy) not in str(e):
                raise
            raise type(e)(str(e).replace(str(copy), str(path))) from None


def _open_for_snapshot(file: Path) -> sqlite3.Connection:
    """Read-only, sharing SQLite's locks with writers (``mode=ro``); ``immutable=1`` only where
    that cannot open (a WAL database in a read-only folder: nobody can be writing it there)."""
    uri = file.resolve().as_uri()
    con = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return con
    except sqlite3.OperationalError:
        con.close()
        return sqlite3.connect(f"{uri}?immutable=1", uri=True)


def table_columns(con: sqlite3.Connection, table: str) -> list[str] | None:
    rows = con.execute(f"PRAGMA table_info({quote(table)})").fetchall()
    return [r[1] for r in rows] or None


def _kind(con: sqlite3.Connection, name: str) -> str | None:
    row = con.execute("SELECT type FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def layout_of(con: sqlite3.Connection, path: str, schema: FeatureSchema) -> Layout:
    """Split the database's columns for ``schema``; DataError when a coded feature is missing
    or ``agent_states`` is not a table."""
    kind = _kind(con, STATES)
    if kind is None:
        raise DataError(f"{path}: no table {STATES!r}")
    if kind != "table":
        raise DataError(f"{path}: {STATES!r} is a {kind}, not a table; the codec reads tables")
    columns = table_columns(con, STATES)
    if columns is None:
        raise DataError(f"{path}: no table {STATES!r}")
    for key in ("agent_id", "step_number"):
        if key not in columns:
            raise DataError(f"{path}: {STATES} has no {key!r} column")
    agent_cols = (table_columns(con, AGENTS) or []) if _kind(con, AGENTS) == "table" else []
    features, agent_features = [], []
    for f in schema.features:
        if f.source == "agents" and f.name in agent_cols:
            agent_features.append(f.name)
        elif f.name in columns:
            features.append(f.name)
        else:
            raise DataError(
                f"{path}: the model codes {f.name!r}, which this database does not have"
            )
    return Layout(columns, features, agent_features, bool(agent_cols))


def count_states(con: sqlite3.Connection) -> int:
    """Rows of agent_states."""
    return int(con.execute(f"SELECT COUNT(*) FROM {STATES}").fetchone()[0])


def feature_table(
    schema: FeatureSchema, chunk: dict[str, list[Any]]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(table for ``schema.encode`` with NULLs filled, NULL mask of each feature with any)."""
    table: dict[str, np.ndarray] = {}
    nulls: dict[str, np.ndarray] = {}
    for f in schema.features:
        values = chunk[f.name]
        if f.kind == "categorical":
            assert f.categories is not None
            mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
            filled = [f.categories[0] if v is None else str(v) for v in values]
            table[f.name] = np.array(filled, dtype=object)
        else:
            arr = _numbers(f.name, values)
            mask = np.isnan(arr)
            if mask.any():
                arr[mask] = schema.normalizers[f.name].mean if f.kind == "continuous" else 0.0
            table[f.name] = arr
        if mask.any():
            nulls[f.name] = mask
    return table, nulls


def _numbers(name: str, values: Any) -> np.ndarray:
    """A numeric feature's values as float64 (NULL -> NaN); DataError naming the column and
    the first value that is not a number (text such as 'lots' in a numeric column)."""
    if isinstance(values, np.ndarray) and values.dtype == np.float64:
        return values
    bad = next((i for i, v in enumerate(values) if not _is_number(v)), None)
    if bad is not None:
        raise DataError(
            f"column {name!r} holds a {type(values[bad]).__name__} where a number belongs "
            f"(row {bad + 1} of its chunk): the model codes numbers only"
        )
    return np.array(values, dtype=np.float64)


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool | str))


def insert_rows(
    con: sqlite3.Connection, table: str, columns: list[str], data: dict[str, list[Any]]
) -> None:
    """Append one chunk of rows to ``table``."""
    marks = ", ".join("?" for _ in columns)
    names = ", ".join(quote(c) for c in columns)
    rows = zip(*(data[c] for c in columns), strict=True)
    con.executemany(f"INSERT INTO {quote(table)} ({names}) VALUES ({marks})", rows)


def arrow_column(values: Any) -> pa.Array | None:
    """A column of decoded values (an Arrow array, or a list of SQLite values) as an Arrow
    array that the ADBC driver binds as ``sqlite3`` binds the Python values: ints, reals or
    texts, each with NULLs; None for a list of mixed classes or blobs."""
    if isinstance(values, pa.Array):
        return values
    found = set(map(type, values)) - {type(None)}
    if not found:
        return pa.nulls(len(values))
    kind = {int: pa.int64(), float: pa.float64(), str: pa.string()}.get(found.pop())
    return None if kind is None or found else pa.array(values, type=kind)


class StatesWriter:
    """Appends chunks of rows to a database ``create_output`` made: as Arrow tables through
    ADBC, in a background thread (SQLite releases the GIL, so writing a chunk overlaps
    decoding the next), or, for a chunk whose column holds values of several storage classes,
    row by row through ``sqlite3``. ``finish`` waits for the last append (and raises its
    error); ``close`` always stops the thread and closes the ADBC connection."""

    def __init__(
        self, con: sqlite3.Connection, path: str, columns: list[str], table: str = STATES
    ) -> None:
        self.con, self.path, self.columns, self.table = con, path, columns, table
        con.commit()  # the tables exist for the ADBC connection
        self.arrow_con = adbc.connect(path, autocommit=True)
        with closing(self.arrow_con.cursor()) as cur:
            for pragma in ("journal_mode = OFF", "synchronous = OFF"):
                cur.execute(f"PRAGMA {pragma}")
                cur.fetchall()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec-write")
        self.pending: Future | None = None

    def append(self, data: dict[str, Any]) -> None:
        """Append one chunk (columns as lists or Arrow arrays) after the ones before."""
        arrays = [arrow_column(data[c]) for c in self.columns]
        self.finish()
        if all(a is not None for a in arrays):
            table = pa.table(dict(zip(self.columns, arrays, strict=True)))
            self.pending = self.pool.submit(self._ingest, table)
            return
        lists = {c: v.to_pylist() if isinstance(v, pa.Array) else v for c, v in data.items()}
        insert_rows(self.con, self.table, self.columns, lists)
        self.con.commit()

    def _ingest(self, table: pa.Table) -> None:
        try:
            with closing(self.arrow_con.cursor()) as cur:
                cur.adbc_ingest(self.table, table, "append")
        except DRIVER_ERRORS as e:
            raise DataError(f"{self.path}: cannot write {self.table} ({e})") from None

    def finish(self) -> None:
        """Wait for the pending append; its error, if any."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Stop the thread (waiting for a running append) and close the ADBC connection."""
        self.pool.shutdown(wait=True)
        self.arrow_con.close()
