"""What other tables say about each agent state, as one small integer per state: the row
context of the adaptive coder (``context_coder``).

A source is a table of events keyed by ``agent_id`` and ``step_number`` and one text column
(``agent_actions.action_type``, ``health_incidents.cause``): a state's value is the set of that
column's values the table holds at the state's (agent, step), or ``step_offset`` steps before.
The sets are numbered from the table itself (sorted; the ``MAX_SETS - 2`` most frequent get a
number of their own, the rest share one, id 0 is "no event"), so a decoder that has restored the
same table numbers them the same way: nothing about them is stored in the file.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from meaning_transform.codec.sql_guard import quote

MAX_SETS = 32  # per source: "none", the most frequent sets, "other"
MAX_EVENTS = 1 << 26  # rows read from a source table at most (beyond: the source is not used)


@dataclass(frozen=True)
class Source:
    """A table column that says what happened to an agent at a step."""

    table: str
    column: str
    step_offset: int = 0  # 1: the event of the step before the state's

    @property
    def name(self) -> str:
        """``table.column`` (``@-1`` for the step before)."""
        return f"{self.table}.{self.column}" + (f"@-{self.step_offset}" if self.step_offset else "")


ACTIONS = Source("agent_actions", "action_type")
PREVIOUS_ACTIONS = Source("agent_actions", "action_type", 1)
INCIDENTS = Source("health_incidents", "cause")


class EventContext:
    """Per (agent, step): the number of the set of a source's values there (0: none)."""

    def __init__(self, con: sqlite3.Connection, source: Source) -> None:
        self.source = source
        sets: dict[tuple[str, int], set[str]] = {}
        sql = (
            f"SELECT agent_id, step_number, {quote(source.column)} FROM {quote(source.table)} "
            f"LIMIT {MAX_EVENTS + 1}"
        )
        for agent, step, value in con.execute(sql):
            if isinstance(step, int) and not isinstance(agent, bytes | float):
                sets.setdefault((str(agent), step), set()).add(str(value))
        self.usable = len(sets) <= MAX_EVENTS  # (agent, step) pairs: at most its rows
        keys = {k: tuple(sorted(v)) for k, v in sets.items()}
        frequent = Counter(keys.values()).most_common()
        kept = sorted(s for s, _ in sorted(frequent, key=lambda c: (-c[1], c[0]))[: MAX_SETS - 2])
        number = {s: i + 1 for i, s in enumerate(kept)}
        other = len(kept) + 1
        self.size = other + 1
        self.ids = {k: number.get(s, other) for k, s in keys.items()}

    def of(self, agents: Sequence[object], steps: Sequence[object]) -> np.ndarray:
        """Each state's set number (int64)."""
        off, ids = self.source.step_offset, self.ids
        return np.fromiter(
            (
                ids.get((str(a), s - off), 0) if isinstance(s, int) else 0
                for a, s in zip(agents, steps, strict=True)
            ),
            dtype=np.int64,
            count=len(agents),
        )


class AgentValues:
    """Per agent: numbers of its row in ``agents`` (its first, as ``states.coding_rows`` joins
    agent features), e.g. where it was born: a guess at its first state."""

    def __init__(self, con: sqlite3.Connection, columns: Sequence[str]) -> None:
        names = ", ".join(quote(c) for c in columns)
        self.width = len(columns)
        self.rows: dict[str, tuple] = {}
        sql = f"SELECT agent_id, {names} FROM agents ORDER BY rowid LIMIT {MAX_EVENTS}"
        for agent, *values in con.execute(sql) if columns else ():
            self.rows.setdefault(str(agent), tuple(values))

    def of(self, agents: Sequence[object]) -> np.ndarray:
        """[n, columns] float64: each state's agent's values (NaN: missing or not a number)."""
        out = np.full((len(agents), self.width), np.nan)
        for i, agent in enumerate(agents):
            row = self.rows.get(str(agent))
            if row is not None:
                out[i] = [v if isinstance(v, int | float) and not isinstance(v, bool) else np.nan
                          for v in row]  # fmt: skip
        return out


def has_source(con: sqlite3.Connection, source: Source) -> bool:
    """Whether the database has the source's table with agent_id, step_number and its column."""
    columns = {r[1] for r in con.execute(f"PRAGMA table_info({quote(source.table)})")}
    return {"agent_id", "step_number", source.column} <= columns


def readable(con: sqlite3.Connection, source: Source) -> bool:
    """Whether the source's table has at most MAX_EVENTS rows (``EventContext.usable``)."""
    sql = f"SELECT COUNT(*) FROM (SELECT 1 FROM {quote(source.table)} LIMIT {MAX_EVENTS + 1})"
    return con.execute(sql).fetchone()[0] <= MAX_EVENTS


def combined(parts: Sequence[tuple[np.ndarray, int]], n: int) -> tuple[np.ndarray, int]:
    """Several contexts (ids, how many) of ``n`` states as one: mixed radix, and the number of
    values (none: every state 0, of 1)."""
    out, size = np.zeros(n, dtype=np.int64), 1
    for ids, k in parts:
        out = out * k + ids
        size *= k
    return out, size
