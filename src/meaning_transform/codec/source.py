"""The database side of the codec: stream agent states out of a simulation.db, write them back.

The input is opened read-only (``data.sqlite.open_uri``: ``mode=ro``, or ``immutable=1`` for a
cleanly closed WAL database) and read in (agent_id, step_number) order with ``fetchmany``, so
memory stays flat in the size of the database. Columns of ``agent_states`` are split into keys
(``columns.KEY_COLUMNS``), the model's features, and the others; features read from the
``agents`` table (``agent_type``) come from a LEFT JOIN.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meaning_transform.codec.columns import KEY_COLUMNS
from meaning_transform.data.sqlite import AGENTS, STATES, check_sqlite_args, open_uri
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


def _table_columns(con: sqlite3.Connection, table: str) -> list[str] | None:
    rows = con.execute(f'PRAGMA table_info("{table}")').fetchall()
    return [r[1] for r in rows] or None


def layout_of(con: sqlite3.Connection, path: str, schema: FeatureSchema) -> Layout:
    """Split the database's columns for ``schema``; DataError when a coded feature is missing."""
    columns = _table_columns(con, STATES)
    if columns is None:
        raise DataError(f"{path}: no table {STATES!r}")
    for key in ("agent_id", "step_number"):
        if key not in columns:
            raise DataError(f"{path}: {STATES} has no {key!r} column")
    agent_cols = _table_columns(con, AGENTS) or []
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
    cols = [f's."{c}"' for c in layout.columns] + [f'a."{c}"' for c in layout.agent_features]
    join = f" LEFT JOIN {AGENTS} a ON a.agent_id = s.agent_id" if layout.agent_features else ""
    sql = f"SELECT {', '.join(cols)} FROM {STATES} s{join} ORDER BY s.agent_id, s.step_number"
    names = layout.columns + layout.agent_features
    with closing(con.execute(sql)) as cur:
        while True:
            rows = cur.fetchmany(chunk_size)
            if not rows:
                return
            yield dict(zip(names, (list(c) for c in zip(*rows, strict=True)), strict=True))


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
            arr = np.array(values, dtype=np.float64)  # NULL -> NaN (SQLite stores no NaN)
            mask = np.isnan(arr)
            if mask.any():
                arr[mask] = schema.normalizers[f.name].mean if f.kind == "continuous" else 0.0
            table[f.name] = arr
        if mask.any():
            nulls[f.name] = mask
    return table, nulls


def create_output(path: str, layout: dict[str, Any]) -> sqlite3.Connection:
    """A new database with the source's ``agent_states`` and an ``agents`` (id, type) table."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = OFF")
    con.execute("PRAGMA synchronous = OFF")
    con.execute(layout["states_sql"])
    if layout["has_agents"]:
        con.execute(
            f"CREATE TABLE {AGENTS} (agent_id VARCHAR(64) PRIMARY KEY, agent_type VARCHAR(50))"
        )
    return con


def insert_states(con: sqlite3.Connection, columns: list[str], data: dict[str, list[Any]]) -> None:
    """Append one chunk of rows."""
    marks = ", ".join("?" for _ in columns)
    names = ", ".join(f'"{c}"' for c in columns)
    rows = zip(*(data[c] for c in columns), strict=True)
    con.executemany(f"INSERT INTO {STATES} ({names}) VALUES ({marks})", rows)
