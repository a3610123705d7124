"""Read-only loader of agent states from an AgentFarm ``simulation.db``.

Reads ``agent_states`` (``step_number`` becomes ``step``) and, for schema features whose source is
``agents`` (``agent_type``), the ``agents`` table -- the result equals
``agent_states LEFT JOIN agents USING (agent_id)``, with the join done on the (small) agents table
in Python, which is cheaper than joining every state in SQL. The database is opened with a
``mode=ro`` URI and never written.
"""

from __future__ import annotations

import gc
import logging
import numbers
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from meaning_transform.data.errors import DataError
from meaning_transform.schema import Feature, FeatureSchema, Table

log = logging.getLogger(__name__)

STATES = "agent_states"
AGENTS = "agents"
KEYS = {"agent_id": "agent_id", "step_number": "step"}  # database column -> table column
SQLITE_HEADER = b"SQLite format 3\x00"
FETCH_ROWS = 65536  # rows converted to numpy at a time (bounds peak memory)


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
    Optional features whose column is missing are omitted (``schema.fit`` drops them). Features
    read from the ``agents`` table (``agent_type``) are omitted with one logged line when the
    database has no ``agents`` table (older AgentFarm schema) and the feature is optional; when
    such a feature is required, a DataError says to set
    ``schema.features.agent_type.optional=true`` or remove the feature. NULL/NaN feature values
    are returned as they are (the datamodule reports or drops them); NULL keys
    (``agent_id``, ``step_number``) raise DataError. Raises DataError for every unusable input.
    """
    file, steps, types = check_sqlite_args(path, step_range, agent_types, limit)
    with closing(_connect(file)) as con, _gc_paused():
        state_cols = _columns(con, STATES)
        if state_cols is None:
            found = sorted(
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            )
            raise DataError(f"{file}: no table {STATES!r}; tables found: {found}")
        agent_cols = _columns(con, AGENTS)
        state_feats = _state_columns(file, schema, state_cols)
        agent_feats = _agent_columns(file, schema, agent_cols)
        where, params = _filters(con, file, agent_cols, steps, types)
        sql = f"SELECT {', '.join(_quote(c) for c in [*KEYS, *state_feats])} FROM {STATES}{where}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        table = _fetch(con.execute(sql, params), file, [*KEYS, *state_feats], schema)
        if len(table["step"]) == 0:
            raise _no_rows(con, file, steps, types, limit)
        if agent_feats:
            table.update(_join_agents(con, file, table["agent_id"], agent_feats))
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
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(
            f"database file {str(file)!r} not found (expected an AgentFarm simulation.db)"
        )
    if not file.is_file():
        raise DataError(f"database path {str(file)!r} is not a file (expected simulation.db)")
    with file.open("rb") as fh:
        header = fh.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise DataError(
            f"{file} is not an SQLite database (expected header {SQLITE_HEADER!r}, "
            f"found {header!r})"
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
@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: millions of fresh row tuples would trigger it over and over."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _connect(file: Path) -> sqlite3.Connection:
    """Read-only connection (``as_uri`` percent-encodes characters special in URIs)."""
    try:
        return sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise DataError(f"{file}: cannot open read-only as SQLite ({e})") from None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns(con: sqlite3.Connection, table: str) -> list[str] | None:
    """Column names of ``table``, or None if the database has no such table."""
    try:
        exists = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", (table,)
        ).fetchone()
    except sqlite3.DatabaseError as e:
        raise DataError(f"cannot read the database schema ({e})") from None
    if not exists:
        return None
    return [row[1] for row in con.execute(f"PRAGMA table_info({_quote(table)})")]


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
    con: sqlite3.Connection,
    file: Path,
    agent_cols: list[str] | None,
    steps: tuple[int, int] | None,
    types: list[str] | None,
) -> tuple[str, list[Any]]:
    """SQL WHERE clause and its parameters for the step and agent-type filters."""
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
        present = sorted(
            str(r[0]) for r in con.execute(f"SELECT DISTINCT agent_type FROM {AGENTS}")
        )
        unknown = sorted(set(types) - set(present))
        if unknown:
            raise DataError(f"agent_types {unknown} not in {file}; types present: {present}")
        marks = ", ".join("?" * len(types))
        clauses.append(f"agent_id IN (SELECT agent_id FROM {AGENTS} WHERE agent_type IN ({marks}))")
        params += types
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _fetch(cursor: sqlite3.Cursor, file: Path, columns: list[str], schema: FeatureSchema) -> Table:
    """Rows -> columns, converted a chunk at a time (numbers to float64 with NULL -> NaN)."""
    kinds = {f.name: f.kind for f in schema.features}
    labels = [f"{file}: {STATES}.{n}" for n in columns]
    parts: list[list[np.ndarray]] = []
    while rows := cursor.fetchmany(FETCH_ROWS):
        chunk = zip(*rows, strict=True)
        parts.append(
            [_convert(c, kinds.get(n), w) for n, w, c in zip(columns, labels, chunk, strict=True)]
        )
    if not parts:
        parts = [[_convert((), kinds.get(n), w) for n, w in zip(columns, labels, strict=True)]]
    table = {
        KEYS.get(n, n): np.concatenate(cols)
        for n, cols in zip(columns, zip(*parts, strict=True), strict=True)
    }
    for db_col, col in KEYS.items():
        null = int(np.isnan(table[col]).sum()) if col == "step" else table[col].tolist().count(None)
        if null:
            raise DataError(f"{file}: {null} rows of {STATES!r} have NULL {db_col}; expected none")
    table["step"] = table["step"].astype(np.int64)
    return table


def _convert(values: tuple, kind: str | None, where: str) -> np.ndarray:
    """One column of a chunk -> numpy: categoricals and ids as objects, the rest float64."""
    if kind == "categorical" or where.endswith(".agent_id"):
        return np.array(values, dtype=object)
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        bad = next(v for v in values if v is not None and not isinstance(v, int | float))
        raise DataError(f"{where} should hold numbers, found {bad!r}") from None


def _join_agents(
    con: sqlite3.Connection, file: Path, agent_ids: np.ndarray, features: list[Feature]
) -> Table:
    """Per-state values of agents-table features (None where the agent is not in that table)."""
    cols = ", ".join(_quote(f.name) for f in features)
    by_agent = {row[0]: row[1:] for row in con.execute(f"SELECT agent_id, {cols} FROM {AGENTS}")}
    missing = (None,) * len(features)
    columns = zip(*[by_agent.get(a, missing) for a in agent_ids], strict=True)
    return {
        f.name: _convert(c, f.kind, f"{file}: {AGENTS}.{f.name}")
        for f, c in zip(features, columns, strict=True)
    }


def _no_rows(
    con: sqlite3.Connection,
    file: Path,
    steps: tuple[int, int] | None,
    types: list[str] | None,
    limit: int | None,
) -> DataError:
    total = con.execute(f"SELECT COUNT(*) FROM {STATES}").fetchone()[0]
    if total == 0:
        return DataError(f"{file}: table {STATES!r} has no rows (expected agent states)")
    used = {"step_range": steps, "agent_types": types, "limit": limit}
    filters = ", ".join(f"{k}={v!r}" for k, v in used.items() if v is not None)
    lo, hi = con.execute(f"SELECT MIN(step_number), MAX(step_number) FROM {STATES}").fetchone()
    return DataError(
        f"{file}: no rows of {STATES!r} match the filters {filters} "
        f"(the table has {total} rows, steps {lo}..{hi})"
    )
