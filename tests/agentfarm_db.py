"""Writer of realistic AgentFarm ``simulation.db`` files, shared by tests and benchmarks.

The layout follows the real AgentFarm schema (see shared/data/README.md): text ids
``"<simulation_id>:<agent_id>-<step>"``, ``step_number``, ``is_defending`` stored as 0/1,
``position_z`` NULL, and an ``agents`` table holding each agent's ``agent_type``. The older
schema (``old_schema=True``) lacks ``starting_health`` and ``starvation_counter``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path

import numpy as np

from meaning_transform.data.synthetic import DEFAULT_AGENT_TYPES, generate_synthetic
from meaning_transform.schema import Table

SIMULATION_ID = "sim_test"
STATE_COLUMNS = (
    ("position_x", "FLOAT"),
    ("position_y", "FLOAT"),
    ("position_z", "FLOAT"),
    ("resource_level", "FLOAT"),
    ("current_health", "FLOAT"),
    ("starting_health", "FLOAT"),
    ("starvation_counter", "INTEGER"),
    ("is_defending", "BOOLEAN"),
    ("total_reward", "FLOAT"),
    ("age", "INTEGER"),
)
OLD_SCHEMA_MISSING = ("starting_health", "starvation_counter")
INTEGER_COLUMNS = ("starvation_counter", "is_defending", "age")


def write_agentfarm_db(
    path: str | Path,
    num_states: int,
    num_agents: int | None = None,
    seed: int = 0,
    old_schema: bool = False,
    with_agents_table: bool = True,
    nulls: Mapping[str, int] | None = None,
    agent_types: tuple[str, ...] = DEFAULT_AGENT_TYPES,
) -> Table:
    """Write a simulation.db of ``num_states`` synthetic states; return the table written.

    ``nulls`` maps a column of ``agent_states`` to how many (seeded, random) rows are NULL.
    The returned table holds the values as stored (agent ids as text, NULLs as NaN/None).
    """
    table = generate_synthetic(num_states, seed, num_agents, agent_types=agent_types)
    table["agent_id"] = np.char.add("agent_", table["agent_id"].astype(str)).astype(object)
    columns = [(c, t) for c, t in STATE_COLUMNS if not (old_schema and c in OLD_SCHEMA_MISSING)]
    _apply_nulls(table, nulls or {}, [c for c, _ in columns], seed)
    with closing(sqlite3.connect(path)) as con:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        if with_agents_table:
            _write_agents(con, table)
        _write_states(con, table, columns)
        con.commit()
    return table


def _apply_nulls(table: Table, nulls: Mapping[str, int], columns: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    n = len(table["step"])
    for col, count in nulls.items():
        if col not in columns:
            raise ValueError(f"nulls: column {col!r} is not written; columns: {columns}")
        rows = rng.choice(n, size=count, replace=False)
        table[col] = table[col].astype(object)
        table[col][rows] = None


def _sql_values(col: np.ndarray, integer: bool) -> list:
    """Column -> Python values for sqlite (NaN -> NULL, integer columns as int)."""
    if col.dtype == object:
        return [None if v is None or v != v else (int(v) if integer else v) for v in col]
    if integer:
        return col.astype(np.int64).tolist()
    return [None if v != v else v for v in col.tolist()]


def _write_states(con: sqlite3.Connection, table: Table, columns: list[tuple[str, str]]) -> None:
    names = [c for c, _ in columns]
    decl = ", ".join(f"{c} {t}" for c, t in columns)
    con.execute(
        "CREATE TABLE agent_states (id VARCHAR(128) NOT NULL, simulation_id VARCHAR(64), "
        f"step_number INTEGER, agent_id VARCHAR(64), {decl}, PRIMARY KEY (id))"
    )
    steps = table["step"].tolist()
    ids = [f"{SIMULATION_ID}:{a}-{s}" for a, s in zip(table["agent_id"], steps, strict=True)]
    values = [_sql_values(table[c], c in INTEGER_COLUMNS) for c in names]
    rows = zip(
        ids, [SIMULATION_ID] * len(ids), steps, table["agent_id"].tolist(), *values, strict=True
    )
    marks = ", ".join("?" * (4 + len(names)))
    con.executemany(
        f"INSERT INTO agent_states (id, simulation_id, step_number, agent_id, {', '.join(names)})"
        f" VALUES ({marks})",
        rows,
    )


def _write_agents(con: sqlite3.Connection, table: Table) -> None:
    con.execute(
        "CREATE TABLE agents (simulation_id VARCHAR(64), agent_id VARCHAR(64) NOT NULL, "
        "birth_time INTEGER, death_time INTEGER, agent_type VARCHAR(50), position_x FLOAT, "
        "position_y FLOAT, initial_resources FLOAT, starting_health FLOAT, genome_id VARCHAR(64), "
        "generation INTEGER, action_weights JSON, PRIMARY KEY (agent_id))"
    )
    ids = table["agent_id"]
    first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    last = np.r_[first[1:], len(ids)] - 1
    rows = [
        (
            SIMULATION_ID,
            ids[a],
            int(table["step"][a]),
            int(table["step"][b]) + 1,
            str(table["agent_type"][a]),
            float(table["position_x"][a]),
            float(table["position_y"][a]),
            5.0,
            100.0,
            f"::{i}",
            0,
            "{}",
        )
        for i, (a, b) in enumerate(zip(first, last, strict=True))
    ]
    con.executemany(f"INSERT INTO agents VALUES ({', '.join('?' * 12)})", rows)
