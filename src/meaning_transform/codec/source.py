"""The database side of the codec: stream agent states out of a simulation.db, write them back.

The input is opened read-only (``data.sqlite.open_uri``: ``mode=ro``, or ``immutable=1`` for a
cleanly closed WAL database) and read in (agent_id, step_number) order, a chunk at a time, so
memory stays flat in the size of the database: as Arrow columns through the ADBC driver
(``read_arrays``, one chunk ahead in a thread), or with ``sqlite3``'s ``fetchmany``
(``read_chunks``) for a database whose columns mix storage classes. Columns of ``agent_states`` are split into keys
(``columns.KEY_COLUMNS``), the model's features, and the others; features read from the
``agents`` table (``agent_type``) come from a LEFT JOIN.
"""

from __future__ import annotations

import queue
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adbc_driver_sqlite
import numpy as np
import pyarrow as pa

from meaning_transform.codec.columns import KEY_COLUMNS
from meaning_transform.codec.sql_guard import SchemaGuard, quote
from meaning_transform.data.sqlite import (
    AGENTS,
    BATCH_ROWS,
    BUSY_TIMEOUT_MS,
    DRIVER_ERRORS,
    STATES,
    adbc,
    check_sqlite_args,
    connect_read_only,
    open_uri,
)
from meaning_transform.errors import DataError
from meaning_transform.schema import FeatureSchema


@dataclass
class Layout:
    """Which columns of ``agent_states`` are keys, coded features and others."""

    states_sql: str  # CREATE TABLE statement of agent_states
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

    def to_dict(self) -> dict[str, Any]:
        """JSON form (file header)."""
        return dict(self.__dict__)


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
        yield str(copy)


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
    sql = con.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (STATES,)
    ).fetchone()[0]
    return Layout(sql, columns, features, agent_features, bool(agent_cols))


def count_states(con: sqlite3.Connection) -> int:
    """Rows of agent_states."""
    return int(con.execute(f"SELECT COUNT(*) FROM {STATES}").fetchone()[0])


def read_chunks(
    con: sqlite3.Connection, layout: Layout, chunk_size: int
) -> Iterator[dict[str, list[Any]]]:
    """Chunks of rows in (agent_id, step_number) order, as {column: values}."""
    cols = [f"s.{quote(c)}" for c in layout.columns]
    cols += [f"a.{quote(c)}" for c in layout.agent_features]
    join = f" LEFT JOIN {AGENTS} a ON a.agent_id = s.agent_id" if layout.agent_features else ""
    sql = f"SELECT {', '.join(cols)} FROM {STATES} s{join} ORDER BY s.agent_id, s.step_number"
    names = layout.columns + layout.agent_features
    with closing(con.execute(sql)) as cur:
        while True:
            rows = cur.fetchmany(chunk_size)
            if not rows:
                return
            yield dict(zip(names, (list(c) for c in zip(*rows, strict=True)), strict=True))


def read_states(
    con: sqlite3.Connection, columns: list[str], chunk_size: int
) -> Iterator[dict[str, list[Any]]]:
    """``agent_states`` alone (no join), in (agent_id, step_number) order, as chunks of
    {column: values}: what verify compares a decoded file with."""
    sql = (
        f"SELECT {', '.join(quote(c) for c in columns)} FROM {STATES} "
        "ORDER BY agent_id, step_number"
    )
    with closing(con.execute(sql)) as cur:
        while rows := cur.fetchmany(chunk_size):
            yield dict(zip(columns, (list(c) for c in zip(*rows, strict=True)), strict=True))


class SlowPath(Exception):
    """``read_arrays`` cannot give the values ``read_chunks`` would (a column holds several
    storage classes, blobs, or the driver failed): read with ``read_chunks`` from the start."""


#: SQLite storage class -> literal of the sentinel row that types the ADBC column
_SENTINELS = {"text": "''", "integer": "0", "real": "-0.5", None: "NULL"}
_CLASSES = "tirb"  # text, integer, real, blob: bit 1 + position in a column's class mask
_BITS = 5  # mask bits per column (bit 0: NULL)
_PER_MASK = 12  # columns per int64 mask column


def _first_class(con: sqlite3.Connection, table: str, column: str) -> str | None:
    """Storage class of the column's first non-NULL value (None: all NULL)."""
    row = con.execute(
        f"SELECT typeof({quote(column)}) FROM {table} WHERE {quote(column)} IS NOT NULL LIMIT 1"
    ).fetchone()
    return None if row is None else row[0]


def read_arrays(
    con: sqlite3.Connection, path: str, layout: Layout, schema: FeatureSchema, chunk_size: int
) -> Iterator[dict[str, Any]]:
    """``read_chunks``'s chunks, faster: rows come through the ADBC driver as Arrow columns.
    Numeric features are float64 arrays (NULL -> NaN); keys, others and categorical features
    lists of the same Python values ``sqlite3`` gives. The driver converts values to its
    column's type, so every such column's storage classes are checked per row (a bit mask
    computed by SQLite); a column with more than one class (or blobs), a numeric feature that
    is not numeric, or a driver error raises ``SlowPath``."""
    numeric = {f.name for f in schema.features if f.kind != "categorical"}
    names = layout.columns + layout.agent_features
    refs = [f"s.{quote(c)}" for c in layout.columns]
    refs += [f"a.{quote(c)}" for c in layout.agent_features]
    kinds: dict[str, str | None] = {}
    for c in names:
        if c in numeric:
            kinds[c] = "number"
        else:
            table = AGENTS if c in layout.agent_features else STATES
            kinds[c] = _first_class(con, table, c)
            if kinds[c] == "blob":
                raise SlowPath(c)
    exact = [i for i, c in enumerate(names) if kinds[c] != "number"]
    masks, expected = [], []
    for g in range(0, len(exact), _PER_MASK):
        group = exact[g : g + _PER_MASK]
        masks.append(
            " | ".join(
                f"(1 << (instr('{_CLASSES}', substr(typeof({refs[i]}), 1, 1)) + {_BITS * j}))"
                for j, i in enumerate(group)
            )
        )
        allowed = 0
        for j, i in enumerate(group):
            k = kinds[names[i]]
            allowed |= (1 | (0 if k is None else 2 << _CLASSES.index(k[0]))) << (_BITS * j)
        expected.append(allowed)
    join = f" LEFT JOIN {AGENTS} a ON a.agent_id = s.agent_id" if layout.agent_features else ""
    sentinel = ", ".join(
        [_SENTINELS["real" if k == "number" else k] for k in kinds.values()] + ["0"] * len(masks)
    )
    sql = (
        f"SELECT {sentinel} UNION ALL SELECT * FROM (SELECT {', '.join(refs + masks)} "
        f"FROM {STATES} s{join} ORDER BY s.agent_id, s.step_number)"
    )
    return read_ahead(_stream(path, sql, names, kinds, expected, chunk_size))


def _stream(
    path: str,
    sql: str,
    names: list[str],
    kinds: dict[str, Any],
    expected: list[int],
    chunk_size: int,
) -> Iterator[dict[str, Any]]:
    """``read_arrays``'s chunks of ``sql`` (a sentinel row, the rows, their class masks)."""
    types = {
        "number": pa.float64(),
        "text": pa.string(),
        "integer": pa.int64(),
        "real": pa.float64(),
    }
    file, _, _ = check_sqlite_args(path)
    adbc_con = connect_read_only(file)
    try:
        with closing(adbc_con.cursor()) as cur:
            cur.adbc_statement.set_options(
                **{adbc_driver_sqlite.StatementOptions.BATCH_ROWS.value: str(BATCH_ROWS)}
            )
            cur.execute(sql)
            pending: list[pa.RecordBatch] = []
            have, first = 0, True
            for batch in cur.fetch_record_batch():
                if first:
                    for c, t in zip(names, batch.schema.types, strict=False):
                        if kinds[c] is not None and t != types[kinds[c]]:
                            raise SlowPath(c)  # the driver promoted the column's type
                    batch, first = batch.slice(1), False
                for m, allowed in enumerate(expected):
                    seen = np.bitwise_or.reduce(batch.column(len(names) + m).to_numpy(), initial=0)
                    if int(seen) & ~allowed:
                        raise SlowPath("storage classes")
                pending.append(batch)
                have += batch.num_rows
                while have >= chunk_size:
                    table = pa.Table.from_batches(pending)
                    yield _columns(table.slice(0, chunk_size), names, kinds)
                    rest = table.slice(chunk_size)
                    pending, have = rest.to_batches(), rest.num_rows
            if have:
                yield _columns(pa.Table.from_batches(pending), names, kinds)
    except DRIVER_ERRORS as e:
        raise SlowPath(str(e)) from None
    finally:
        adbc_con.close()


def read_ahead(items: Iterator[Any]) -> Iterator[Any]:
    """``items``, produced by a background thread one item ahead of the consumer (reading
    SQLite releases the GIL, so reading the next chunk overlaps coding this one). The
    producer's exceptions are raised here; closing this stops and joins the thread."""
    box: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, done))
        except BaseException as e:  # handed to the consumer
            put((False, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="codec-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = box.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _columns(table: pa.Table, names: list[str], kinds: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, name in enumerate(names):
        col = table.column(i)
        if kinds[name] == "number":
            arr = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
            out[name] = np.array(arr, dtype=np.float64)  # NULL -> NaN, writable copy
        else:
            out[name] = col.to_pylist()
    return out


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


def create_output(path: str, layout: dict[str, Any], where: str) -> sqlite3.Connection:
    """A new database with the source's ``agent_states`` (its CREATE TABLE from the file,
    replayed only through ``SchemaGuard``) and an ``agents`` (id, type) table."""
    con = sqlite3.connect(path)
    guard = SchemaGuard(con, where)
    try:
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        guard.create("table", STATES, STATES, layout["states_sql"])
        if table_columns(con, STATES) != layout["columns"]:
            raise DataError(f"{where}: its CREATE TABLE does not have the columns it lists")
    except BaseException:
        con.close()
        raise
    finally:
        guard.close()
    if layout["has_agents"]:
        con.execute(
            f"CREATE TABLE {AGENTS} (agent_id VARCHAR(64) PRIMARY KEY, agent_type VARCHAR(50))"
        )
    return con


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
