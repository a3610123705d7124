"""Read-only loader of agent states from an AgentFarm ``simulation.db``.

Reads ``agent_states`` (``step_number`` becomes ``step``) and, for schema features whose source is
``agents`` (``agent_type``), the ``agents`` table -- the result equals
``agent_states LEFT JOIN agents USING (agent_id)``, with the join done on the distinct agent ids
(a few thousand), which is cheaper than joining every state in SQL.

Rows are read with the ADBC SQLite driver (``adbc-driver-sqlite``), which returns Arrow columns
straight from SQLite's C API: no Python object per value. Without a ``limit``, the table is read
as a few rowid ranges on parallel connections (the driver releases the GIL); the ranges are
concatenated in rowid order. The database is opened read-only and never written (see
``open_uri`` for what may change beside it); a writer's lock is waited for up to 10 s; every
query binds its values as parameters.

The driver infers each Arrow column type from the first rows of a result, so every query starts
with a sentinel row of the intended types (REAL for numbers, TEXT for ids and categories) that is
dropped afterwards: a column whose first rows are NULL, or an INTEGER column holding a REAL later
on, then still reads as float64. A non-numeric value in a numeric column makes the driver fail or
return text; either way the loader looks the value up and names it in a DataError.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import adbc_driver_sqlite
import adbc_driver_sqlite.dbapi as adbc
import numpy as np
import pyarrow as pa

from meaning_transform.data.errors import DataError
from meaning_transform.io import check_input
from meaning_transform.messages import few
from meaning_transform.schema import Feature, FeatureSchema, Table

log = logging.getLogger(__name__)

STATES = "agent_states"
AGENTS = "agents"
KEYS = {"agent_id": "agent_id", "step_number": "step"}  # database column -> table column
SQLITE_HEADER = b"SQLite format 3\x00"
BATCH_ROWS = 1 << 17  # rows per Arrow batch the driver builds
PART_ROWS = 1 << 18  # fewest rowids per parallel range
MAX_PARTS = 4  # most parallel connections
ROWID_ALIASES = ("rowid", "_rowid_", "oid")
NUMBER_SENTINEL = "-0.5"  # REAL literal of the sentinel row
TEXT_SENTINEL = "''"  # TEXT literal of the sentinel row
BUSY_TIMEOUT_MS = 10_000  # how long to wait for a writer's lock before failing
DRIVER_ERRORS = (adbc.Error, OSError)  # ADBC errors; the Arrow stream reports as OSError

Part = tuple[str, int, int] | None  # (rowid alias, first rowid, last rowid), or the whole table


def load_sqlite(
    path: str | Path,
    schema: FeatureSchema,
    step_range: Sequence[int] | None = None,
    agent_types: Sequence[str] | None = None,
    limit: int | None = None,
) -> Table:
    """Agent states of ``path`` as a table with the schema's feature columns (NULL -> NaN/None).

    ``step_range=(first, last)`` keeps steps ``first..last`` inclusive; ``agent_types`` keeps
    agents of the listed types; ``limit`` keeps the first matching rows in table order.
    Optional features whose column is missing are omitted (fitting the schema drops them). Features
    read from the ``agents`` table (``agent_type``) are omitted with one logged line when the
    database has no ``agents`` table (older AgentFarm schema) and the feature is optional; when
    such a feature is required, a DataError says to set
    ``schema.features.agent_type.optional=true`` or remove the feature. NULL/NaN feature values
    are returned as they are (the datamodule reports or drops them); NULL keys
    (``agent_id``, ``step_number``) raise DataError. Raises DataError for every unusable input.

    Columns: ``agent_id`` an object array of str, ``agent`` int64 (each row's index into the
    sorted distinct agent ids), ``step`` int64, numeric features float64 (NULL -> NaN),
    categorical features a numpy str array -- or, when some value is NULL (or the agent is
    missing from the ``agents`` table), an object array of str with None there.
    """
    file, steps, types = check_sqlite_args(path, step_range, agent_types, limit)
    return read_sqlite(file, schema, steps, types, limit)


def read_sqlite(
    file: Path,
    schema: FeatureSchema,
    steps: tuple[int, int] | None,
    types: list[str] | None,
    limit: int | None,
) -> Table:
    """``load_sqlite`` with arguments ``check_sqlite_args`` has already checked."""
    with closing(connect_read_only(file)) as con:
        state_cols = _columns(con, STATES)
        if state_cols is None:
            found = sorted(_values(con, "name", " FROM sqlite_master WHERE type = 'table'"))
            raise DataError(f"{file}: no table {STATES!r}; tables found: {found}")
        agent_cols = _columns(con, AGENTS)
        state_feats = _state_columns(file, schema, state_cols)
        agent_feats = _agent_columns(file, schema, agent_cols)
        clauses, params = _filters(con, file, agent_cols, steps, types)
        kinds = {f.name: f.kind for f in schema.features}
        columns = [*KEYS, *state_feats]
        exprs = [_expr(c, "id" if c == "agent_id" else kinds.get(c)) for c in columns]
        parts = [None] if limit is not None else _parts(con, state_cols)
        try:
            arrow = _read_states(file, con, exprs, clauses, params, limit, parts)
        except DRIVER_ERRORS as e:
            _raise_non_number(con, file, STATES, columns, kinds, clauses, params)
            raise DataError(f"{file}: cannot read table {STATES!r} ({e})") from None
        table, codes, ids = _to_numpy(con, file, arrow, columns, kinds, clauses, params)
        if len(table["step"]) == 0:
            raise _no_rows(con, file, steps, types, limit)
        if agent_feats:
            table.update(_join_agents(con, file, codes, ids, agent_feats))
    return table


# ------------------------------------------------------------------------ arguments
def check_sqlite_args(
    path: str | Path,
    step_range: Sequence[int] | None = None,
    agent_types: Sequence[str] | None = None,
    limit: int | None = None,
) -> tuple[Path, tuple[int, int] | None, list[str] | None]:
    """Validate ``load_sqlite`` arguments (DataError if unusable); return the normalized ones."""
    if limit is not None and not (_is_int(limit) and limit >= 1):
        raise DataError(f"limit must be a positive integer or null, got {limit!r}")
    return _check_file(path), _check_step_range(step_range), _check_agent_types(agent_types)


def _check_file(path: str | Path) -> Path:
    file = check_input(path, "data.path")  # missing, a folder, FIFO or device: one line
    with file.open("rb") as fh:
        header = fh.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:  # its bytes are not shown: a file's contents stay private
        raise DataError(
            f"data.path={str(path)!r} is not an SQLite database (its first "
            f"{len(SQLITE_HEADER)} bytes are not the SQLite header)"
        )
    return file


def _check_step_range(step_range: Sequence[int] | None) -> tuple[int, int] | None:
    if step_range is None:
        return None
    ok = (
        isinstance(step_range, Sequence)
        and not isinstance(step_range, str)
        and len(step_range) == 2
        and all(_is_int(s) for s in step_range)
    )
    if not ok or step_range[0] > step_range[1]:
        raise DataError(
            f"step_range must be [first, last] integers with first <= last, got {step_range!r}"
        )
    return int(step_range[0]), int(step_range[1])


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_agent_types(agent_types: Sequence[str] | None) -> list[str] | None:
    if agent_types is None:
        return None
    if isinstance(agent_types, str) or not isinstance(agent_types, Sequence):
        raise DataError(f"agent_types must be a list such as ['system'], got {agent_types!r}")
    if not agent_types or not all(isinstance(t, str) for t in agent_types):
        raise DataError(
            f"agent_types must be a non-empty list of type names (or null for all types), "
            f"got {list(agent_types)!r}"
        )
    return list(agent_types)


# ------------------------------------------------------------------------ database
def connect_read_only(file: Path) -> adbc.Connection:
    """Read-only connection that changes nothing beside the database (see ``open_uri``)."""
    try:
        con = adbc.connect(open_uri(file), autocommit=True)
    except DRIVER_ERRORS as e:
        raise DataError(f"{file}: cannot open read-only as SQLite ({e})") from None
    try:
        with closing(con.cursor()) as cur:  # a writer holding a lock: wait before failing
            cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cur.fetchall()
    except DRIVER_ERRORS as e:
        con.close()
        raise DataError(f"{file}: cannot open read-only as SQLite ({e})") from None
    return con


def open_uri(file: Path) -> str:
    """The SQLite URI to read ``file`` with (``as_uri`` percent-encodes special characters).

    A WAL-mode database with no ``-wal`` file (closed cleanly: every change is in the file) is
    opened ``immutable=1``: SQLite then creates no ``-wal``/``-shm`` file and takes no lock, so
    the directory may be read-only. With a ``-wal`` file (a writer is attached, or crashed), its
    changes are only readable through the ``-shm`` index that SQLite shares with writers, so the
    database is opened ``mode=ro`` like a rollback-journal one, and SQLite may update ``-shm``.
    """
    uri = file.resolve().as_uri()
    wal = Path(f"{file}-wal")
    if _is_wal(file) and not wal.exists():
        return f"{uri}?immutable=1"
    return f"{uri}?mode=ro"


def _is_wal(file: Path) -> bool:
    """True when the header's read/write format versions (bytes 18-19) say WAL mode."""
    with file.open("rb") as fh:
        header = fh.read(20)
    return len(header) == 20 and header[18] == 2 and header[19] == 2


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _expr(column: str, kind: str | None) -> tuple[str, str]:
    """(SQL expression, sentinel literal) reading one column: text for ids and categories."""
    if kind in ("id", "categorical"):
        return f"CAST({_quote(column)} AS TEXT)", TEXT_SENTINEL
    return _quote(column), NUMBER_SENTINEL


def _select(
    con: adbc.Connection, exprs: list[tuple[str, str]], tail: str, params: Sequence[Any] = ()
) -> pa.Table:
    """``SELECT <exprs><tail>`` as an Arrow table, typed by a leading sentinel row (dropped)."""
    sentinel = ", ".join(s for _, s in exprs)
    sql = f"SELECT {sentinel} UNION ALL SELECT {', '.join(e for e, _ in exprs)}{tail}"
    with closing(con.cursor()) as cur:
        cur.adbc_statement.set_options(
            **{adbc_driver_sqlite.StatementOptions.BATCH_ROWS.value: str(BATCH_ROWS)}
        )
        cur.execute(sql, list(params) or None)
        return cur.fetch_arrow_table().slice(1)


def _values(con: adbc.Connection, expr: str, tail: str, params: Sequence[Any] = ()) -> list:
    """One text column of a query as Python values."""
    return _select(con, [(f"CAST({expr} AS TEXT)", TEXT_SENTINEL)], tail, params)[0].to_pylist()


def _columns(con: adbc.Connection, table: str) -> list[str] | None:
    """Column names of ``table``, or None if the database has no such table."""
    try:
        exists = _values(
            con, "name", " FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", [table]
        )
    except DRIVER_ERRORS as e:
        raise DataError(f"cannot read the database schema ({e})") from None
    if not exists:
        return None
    return _values(con, "name", " FROM pragma_table_info(?)", [table])


def _state_columns(file: Path, schema: FeatureSchema, found: list[str]) -> list[str]:
    """Feature columns to read from agent_states; raise if keys or required columns are missing."""
    wanted = [f for f in schema.features if f.source == STATES]
    missing = [c for c in KEYS if c not in found]
    missing += [f.name for f in wanted if f.name not in found and not f.optional]
    if missing:
        hint = "" if set(missing) & set(KEYS) else " (or mark it optional in the schema)"
        raise DataError(
            f"{file}: table {STATES!r} lacks required column(s) {missing}{hint}; "
            f"columns found: {found}"
        )
    return [f.name for f in wanted if f.name in found]


def _agent_columns(file: Path, schema: FeatureSchema, found: list[str] | None) -> list[Feature]:
    """Features to read from the agents table; drop unavailable optional ones with one log line."""
    wanted = [f for f in schema.features if f.source == AGENTS]
    absent = [f for f in wanted if found is None or "agent_id" not in found or f.name not in found]
    if not absent:
        return wanted
    where = f"no {AGENTS!r} table" if found is None else f"table {AGENTS!r} lacks them"
    required = [f.name for f in absent if not f.optional]
    if required:
        raise DataError(
            f"{file}: feature(s) {required} come from the {AGENTS!r} table but the database has "
            f"{where} (older AgentFarm schema); set schema.features.{required[0]}.optional=true "
            "or remove the feature from the schema"
        )
    log.info(
        "optional feature(s) %s omitted: %s has %s", [f.name for f in absent], file.name, where
    )
    return [f for f in wanted if f not in absent]


def _filters(
    con: adbc.Connection,
    file: Path,
    agent_cols: list[str] | None,
    steps: tuple[int, int] | None,
    types: list[str] | None,
) -> tuple[list[str], list[Any]]:
    """SQL WHERE conditions and their parameters for the step and agent-type filters."""
    clauses: list[str] = []
    params: list[Any] = []
    if steps is not None:
        clauses.append("step_number BETWEEN ? AND ?")
        params += steps
    if types is not None:
        if agent_cols is None or "agent_type" not in agent_cols:
            raise DataError(
                f"agent_types filter needs the {AGENTS!r} table with an agent_type column, "
                f"which {file} does not have; set agent_types to null"
            )
        present = sorted({str(v) for v in _values(con, "agent_type", f" FROM {AGENTS}")})
        unknown = sorted(set(types) - set(present))
        if unknown:
            raise DataError(
                f"agent_types [{few(map(repr, unknown))}] not in {file}; "
                f"types present: [{few(map(repr, present))}]"
            )
        marks = ", ".join("?" * len(types))
        clauses.append(f"agent_id IN (SELECT agent_id FROM {AGENTS} WHERE agent_type IN ({marks}))")
        params += types
    return clauses, params


def _where(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


def _parts(con: adbc.Connection, state_cols: list[str]) -> list[Part]:
    """Rowid ranges to read in parallel ([None]: read the table in one query)."""
    taken = {c.lower() for c in state_cols}
    alias = next((a for a in ROWID_ALIASES if a not in taken), None)
    workers = min(MAX_PARTS, os.cpu_count() or 1)
    if alias is None or workers < 2:
        return [None]
    try:  # fails on WITHOUT ROWID tables and views: read those in one query
        bounds = _select(con, [(f"min({alias})", "0"), (f"max({alias})", "0")], f" FROM {STATES}")
    except DRIVER_ERRORS:
        return [None]
    lo, hi = (bounds[i][0].as_py() for i in range(2))
    if lo is None or hi is None:
        return [None]
    count = min(workers, (hi - lo + 1) // PART_ROWS)
    if count < 2:
        return [None]
    edges = [lo + (hi - lo + 1) * i // count for i in range(count + 1)]
    return [(alias, edges[i], edges[i + 1] - 1) for i in range(count)]


def _read_states(
    file: Path,
    con: adbc.Connection,
    exprs: list[tuple[str, str]],
    clauses: list[str],
    params: list[Any],
    limit: int | None,
    parts: list[Part],
) -> pa.Table:
    """The selected rows of agent_states, each part on its own connection, in rowid order."""

    def read(part: Part, con: adbc.Connection) -> pa.Table:
        conds, args = list(clauses), list(params)
        if part is not None:
            conds.append(f"{part[0]} BETWEEN ? AND ?")
            args += part[1:]
        tail = f" FROM {STATES}{_where(conds)}"
        if limit is not None:  # the LIMIT applies to the sentinel row too
            tail += " LIMIT ?"
            args.append(limit + 1)
        return _select(con, exprs, tail, args)

    def read_own(part: Part) -> pa.Table:
        with closing(connect_read_only(file)) as own:
            return read(part, own)

    if len(parts) == 1:
        return read(parts[0], con)
    with ThreadPoolExecutor(len(parts)) as pool:
        return pa.concat_tables(list(pool.map(read_own, parts)))


def _to_numpy(
    con: adbc.Connection,
    file: Path,
    arrow: pa.Table,
    columns: list[str],
    kinds: dict[str, str],
    clauses: list[str],
    params: list[Any],
) -> tuple[Table, np.ndarray, np.ndarray]:
    """Arrow columns -> table; also the agent-id codes of the rows and the distinct ids."""
    table: Table = {}
    for name, col in zip(columns, arrow.columns, strict=True):
        if name == "agent_id" or kinds.get(name) == "categorical":
            codes, values = _dictionary_encode(col)
            if name == "agent_id":
                null = int(np.count_nonzero(codes < 0))
                if null:
                    raise DataError(
                        f"{file}: {null} rows of {STATES!r} have NULL agent_id; expected none"
                    )
                ids, id_codes = _objects(values), codes
                table["agent_id"] = ids[codes]
                rank = np.empty(len(values), dtype=np.int64)
                rank[np.argsort(ids)] = np.arange(len(values))
                table["agent"] = rank[codes]  # codes into the sorted ids (see load_sqlite)
            else:
                table[name] = _text_column(values, codes)
        elif pa.types.is_floating(col.type):
            table[KEYS.get(name, name)] = col.to_numpy()
        else:  # the driver typed the column as text: some value is not a number
            _raise_non_number(con, file, STATES, [name], kinds, clauses, params)
            raise DataError(f"{file}: {STATES}.{name} should hold numbers, found {col.type}")
    null = int(np.count_nonzero(np.isnan(table["step"])))
    if null:
        raise DataError(f"{file}: {null} rows of {STATES!r} have NULL step_number; expected none")
    table["step"] = table["step"].astype(np.int64)
    return table, id_codes, ids


def _dictionary_encode(col: pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """Per-row index into the distinct values (-1 for NULL), and the distinct values."""
    encoded = col.combine_chunks().dictionary_encode()
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, encoded.dictionary.to_pylist()


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _text_column(values: list, codes: np.ndarray) -> np.ndarray:
    """Rows of a text column: a numpy str array, or objects with None where NULL."""
    if (codes >= 0).all() and all(isinstance(v, str) for v in values):
        return np.array(values, dtype=str)[codes]
    return _objects([*values, None])[codes]  # code -1 picks the trailing None


def _raise_non_number(
    con: adbc.Connection,
    file: Path,
    source: str,
    columns: list[str],
    kinds: dict[str, str],
    clauses: list[str],
    params: list[Any],
) -> None:
    """Raise DataError naming the first text/blob value among the numeric ``columns``."""
    for name in columns:
        if name == "agent_id" or kinds.get(name) == "categorical":
            continue
        conds = [f"typeof({_quote(name)}) IN ('text', 'blob')", *clauses]
        tail = f" FROM {source}{_where(conds)} LIMIT 1"
        with closing(con.cursor()) as cur:
            cur.execute(f"SELECT {_quote(name)}{tail}", list(params) or None)
            row = cur.fetchone()
        if row is not None:
            raise DataError(f"{file}: {source}.{name} should hold numbers, found {row[0]!r}")


def _join_agents(
    con: adbc.Connection, file: Path, codes: np.ndarray, ids: np.ndarray, features: list[Feature]
) -> Table:
    """Per-state values of agents-table features (None/NaN where the agent is not in that table)."""
    kinds = {f.name: f.kind for f in features}
    exprs = [_expr("agent_id", "id"), *(_expr(f.name, f.kind) for f in features)]
    try:
        arrow = _select(con, exprs, f" FROM {AGENTS}")
    except DRIVER_ERRORS as e:
        _raise_non_number(con, file, AGENTS, list(kinds), kinds, [], [])
        raise DataError(f"{file}: cannot read table {AGENTS!r} ({e})") from None
    for f, col in zip(features, arrow.columns[1:], strict=True):
        if f.kind != "categorical" and not pa.types.is_floating(col.type):
            _raise_non_number(con, file, AGENTS, [f.name], kinds, [], [])
    values = [c.to_pylist() for c in arrow.columns]
    by_agent = dict(zip(values[0], zip(*values[1:], strict=True), strict=True))
    rows = [by_agent.get(a, (None,) * len(features)) for a in ids.tolist()]
    out = {}
    for j, f in enumerate(features):
        values = [row[j] for row in rows]
        if f.kind == "categorical":
            present = [v is not None for v in values]
            out[f.name] = _text_column(values, np.where(present, np.arange(len(values)), -1)[codes])
        else:
            out[f.name] = np.array(values, dtype=np.float64)[codes]
    return out


def _no_rows(
    con: adbc.Connection,
    file: Path,
    steps: tuple[int, int] | None,
    types: list[str] | None,
    limit: int | None,
) -> DataError:
    counts = _select(
        con,
        [
            ("COUNT(*)", "0"),
            ("CAST(MIN(step_number) AS INTEGER)", "0"),
            ("CAST(MAX(step_number) AS INTEGER)", "0"),
        ],
        f" FROM {STATES}",
    )
    total, lo, hi = (col[0].as_py() for col in counts.columns)
    if total == 0:
        return DataError(f"{file}: table {STATES!r} has no rows (expected agent states)")
    used = {"step_range": steps, "agent_types": types, "limit": limit}
    filters = ", ".join(f"{k}={v!r}" for k, v in used.items() if v is not None)
    return DataError(
        f"{file}: no rows of {STATES!r} match the filters {filters} "
        f"(the table has {total} rows, steps {lo}..{hi})"
    )
