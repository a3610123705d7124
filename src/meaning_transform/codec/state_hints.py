"""Agent states that other tables already spell out: exact guesses for the adaptive coder
(``context_coder``'s ``hint``).

An AgentFarm action logs what it did in JSON: a defend's ``resources_after``, a move's
``current_position``, a pass's ``agent_health`` are the very values of the agent's state at that
step; a health incident's ``health_after`` is the agent's health. Those tables are restored
before ``agent_states``, so a decoder can read them too. A **hint** names one such value:
``(feature, table, kind, path)``, where ``kind`` is the row's ``action_type`` / ``cause`` and
``path`` a numeric column, or a column and the keys and list indices into its JSON. The encoder
finds them (``find_hints``): for every kind of row and every number it holds, how often the
number's grid cell is the cell of a continuous feature of the state at the same (agent, step); one
that agrees in ``MIN_SHARE`` of at least ``MIN_ROWS`` rows, far more often than the state's most
common cell does, and guesses states no hint before it guesses, becomes a hint. Nothing is
assumed about names, and the file's header carries the hints (a few hundred bytes at most), so a
decoder reads the same values. A guess is only a guess: the coder codes each state's cell
relative to it and learns how often it is right.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from meaning_transform.codec.bounded import CodecFileError
from meaning_transform.codec.sql_guard import quote
from meaning_transform.codec.state_context import MAX_EVENTS
from meaning_transform.grid import MeaningGrid

#: the tables read for hints: each keyed by (agent_id, step_number), with the column that says
#: what kind of row it is (a hint holds for one kind)
TABLES = {"agent_actions": "action_type", "health_incidents": "cause"}
_KEYS = ("agent_id", "step_number")
NO_HINT = -(1 << 62)  # a state feature nothing guesses
MAX_HINTS = 32
MAX_PATH = 5  # a column, then keys and list indices into its JSON
MAX_NAME = 64  # characters of a kind, a column or a key
MIN_ROWS = 16  # a leaf seen in fewer rows is not tried
MIN_SHARE = 0.9  # ... nor one that agrees with the state's cell less often than this
MAX_SAMPLE = 1 << 16  # rows of each table the encoder looks at to find hints (its first)
_MAX_CELL = 2.0**50  # values beyond this many cells guess nothing


@dataclass(frozen=True)
class Hint:
    """A value of one kind of row of a table that guesses a state feature: a numeric column
    (``path`` = its name) or a number in a column's JSON (the column, then keys and indices)."""

    feature: str
    table: str
    kind: str
    path: tuple[str | int, ...]

    def entry(self) -> list[Any]:
        """Its header entry: ``[feature, table, kind, *path]``."""
        return [self.feature, self.table, self.kind, *self.path]


def leaves(obj: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple, float]]:
    """(path, value) of every finite number in parsed JSON, at most ``MAX_PATH`` deep."""
    if isinstance(obj, bool) or len(path) > MAX_PATH:
        return
    if isinstance(obj, int | float):
        if path and math.isfinite(obj):
            yield path, float(obj)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if len(key) <= MAX_NAME:
                yield from leaves(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj[:MAX_NAME]):
            yield from leaves(value, (*path, i))


def _parsed(text: Any) -> Any:
    """The JSON object a text cell holds, or None."""
    if not isinstance(text, str) or not text.startswith("{"):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def value_columns(con: sqlite3.Connection, table: str) -> list[str]:
    """The columns of ``table`` a hint may read (all but its keys and kind), or none if it
    lacks them."""
    columns = [r[1] for r in con.execute(f"PRAGMA table_info({quote(table)})")]
    if not {*_KEYS, TABLES[table]} <= set(columns):
        return []
    return [c for c in columns if c not in (*_KEYS, TABLES[table]) and len(c) <= MAX_NAME]


def _row_leaves(columns: Sequence[str], row: Sequence[Any]) -> Iterator[tuple[tuple, float]]:
    """(path, value) of a row's numbers: numeric columns, and numbers in its JSON columns."""
    for column, value in zip(columns, row, strict=True):
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                yield (column,), float(value)
        elif isinstance(value, str) and value.startswith("{"):
            for path, number in _text_leaves(value):
                yield (column, *path), number


@functools.lru_cache(maxsize=4096)
def _text_leaves(text: str) -> tuple[tuple[tuple, float], ...]:
    """``leaves`` of a JSON text (remembered: a simulation logs the same texts again and again)."""
    obj = _parsed(text)
    return () if obj is None else tuple(leaves(obj))


def _cells(grid: MeaningGrid, name: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cells, usable) of native values of a continuous feature."""
    values = np.asarray(values, dtype=np.float64)
    usable = np.isfinite(values) & (np.abs(values) < _MAX_CELL * grid.steps[name])
    return grid.cells(name, np.where(usable, values, 0.0)), usable


def find_hints(
    con: sqlite3.Connection,
    grid: MeaningGrid,
    features: Sequence[str],
    loose: Collection[str] = (),
) -> tuple[Hint, ...]:
    """The hints of ``con``'s ``TABLES`` for ``features`` (continuous, columns of
    agent_states), most reliable first; none if the tables are not there. ``loose``: columns
    (``table.column``) with a declared tolerance, which a decoder does not get back exactly and
    so cannot guess from."""
    if not features:
        return ()
    index: dict[tuple[str, int], int] = {}  # the (agent, step) of the rows looked at
    seen: dict[tuple[str, str, tuple], tuple[list[float], list[int]]] = {}
    for table, kind_column in TABLES.items():
        columns = value_columns(con, table) if _exists(con, table) else []
        columns = [c for c in columns if f"{table}.{c}" not in loose]
        if not columns:
            continue
        names = ", ".join(quote(c) for c in (*_KEYS, kind_column, *columns))
        for agent, step, kind, *row in con.execute(
            f"SELECT {names} FROM {quote(table)} LIMIT {MAX_SAMPLE}"
        ):
            if not isinstance(step, int) or not isinstance(kind, str) or len(kind) > MAX_NAME:
                continue
            i = index.setdefault((str(agent), step), len(index))
            for path, value in _row_leaves(columns, row):
                values, at = seen.setdefault((table, kind, path), ([], []))
                values.append(value)
                at.append(i)
    if not seen:
        return ()
    native = np.full((len(index), len(features)), np.nan)  # those states' values
    filled = np.zeros(len(index), dtype=bool)  # an (agent, step) twice: its first row
    columns = ", ".join(quote(f) for f in features)
    sql = f"SELECT agent_id, step_number, {columns} FROM agent_states LIMIT {MAX_EVENTS}"
    for agent, step, *values in con.execute(sql):
        i = index.get((str(agent), step)) if isinstance(step, int) else None
        if i is not None and not filled[i]:
            native[i] = [v if isinstance(v, int | float) else math.nan for v in values]
            filled[i] = True
    state_cells = [_cells(grid, f, native[:, j]) for j, f in enumerate(features)]
    found = []
    for (table, kind, path), (values, at) in seen.items():
        if len(values) < MIN_ROWS:
            continue
        at_ = np.array(at)
        for j, feature in enumerate(features):
            cells, usable = _cells(grid, feature, np.array(values))
            theirs, known = state_cells[j]
            right = usable & known[at_] & (cells == theirs[at_])
            if right.mean() >= MIN_SHARE and _informative(right, theirs[at_]):
                order = (-right.mean(), -len(values), feature, table, kind, repr(path))
                found.append((order, Hint(feature, table, kind, path), j, at_))
    found.sort(key=lambda h: h[0])
    return _covering([h[1:] for h in found])


def _informative(right: np.ndarray, theirs: np.ndarray) -> bool:
    """Whether a guess is wrong at most half as often as always guessing the rows' most common
    cell (a field that is 0 where the feature mostly is 0 says nothing)."""
    common = np.unique(theirs, return_counts=True)[1].max() / len(theirs)
    return 1 - right.mean() <= 0.5 * (1 - common)


def _covering(candidates: list[tuple[Hint, int, np.ndarray]]) -> tuple[Hint, ...]:
    """Hints in order, each kept only if it guesses ``MIN_ROWS`` (state, feature) pairs the
    ones kept before it do not (a defend's ``resources_before`` adds nothing to its
    ``resources_after``), at most ``MAX_HINTS``."""
    kept: list[Hint] = []
    covered: dict[int, set[int]] = {}
    for hint, j, at in candidates:
        new = set(at.tolist()) - covered.get(j, set())
        if len(new) >= MIN_ROWS and len(kept) < MAX_HINTS:
            kept.append(hint)
            covered.setdefault(j, set()).update(new)
    return tuple(kept)


def hints_of(entries: Any, continuous: set[str], where: str) -> tuple[Hint, ...]:
    """The hints a file's header names; CodecFileError unless each is a continuous feature, one
    of ``TABLES``, a short kind and a path of a short column name, then short keys and small
    indices."""
    bad = CodecFileError(f"{where}: field 'hints' is not a list of state hints")
    if not isinstance(entries, list) or len(entries) > MAX_HINTS:
        raise bad
    hints = []
    for e in entries:
        if not isinstance(e, list) or not 4 <= len(e) <= 3 + MAX_PATH:
            raise bad
        feature, table, kind, *path = e
        if (
            feature not in continuous
            or table not in TABLES
            or not isinstance(kind, str)
            or len(kind) > MAX_NAME
            or not isinstance(path[0], str)
        ):
            raise bad
        for p in path:
            if isinstance(p, bool) or not (
                (isinstance(p, str) and len(p) <= MAX_NAME)
                or (isinstance(p, int) and 0 <= p < MAX_NAME)
            ):
                raise bad
        hints.append(Hint(feature, table, kind, tuple(path)))
    return tuple(hints)


def _exists(con: sqlite3.Connection, table: str) -> bool:
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return con.execute(sql, (table,)).fetchone() is not None


def _at(obj: Any, path: tuple[str | int, ...]) -> float | None:
    """The finite number at ``path`` in parsed JSON, or None."""
    for p in path:
        if isinstance(p, str) and isinstance(obj, dict):
            obj = obj.get(p)
        elif isinstance(p, int) and isinstance(obj, list) and p < len(obj):
            obj = obj[p]
        else:
            return None
    ok = isinstance(obj, int | float) and not isinstance(obj, bool) and math.isfinite(obj)
    return float(obj) if ok else None


class HintValues:
    """Per (agent, step): the cells the hints guess for the features they name. Where several
    rows or hints guess one feature, the first hint (in the header's order) wins, and among its
    rows the lowest cell: the same whatever order the table's rows come in. Kept as one int64
    row per (agent, step) that has a guess."""

    def __init__(
        self, con: sqlite3.Connection, hints: Sequence[Hint], grid: MeaningGrid, features: list
    ) -> None:
        self.width = len(features)
        self.index: dict[tuple[str, int], int] = {}
        # every guess read: (its (agent, step)'s number, feature, hint rank, value)
        found: tuple[list[int], list[int], list[int], list[float]] = ([], [], [], [])
        column = {f: j for j, f in enumerate(features)}
        ranked = list(enumerate(hints))
        for table in TABLES:
            mine = [(rank, column[h.feature], h) for rank, h in ranked if h.table == table]
            if mine:
                self._read(con, table, mine, found)
        self.cells = np.full((len(self.index), self.width), NO_HINT, dtype=np.int64)
        at, j, rank, value = (np.array(x) for x in found)
        if not len(at):
            return
        cell = np.zeros(len(at), dtype=np.int64)
        usable = np.zeros(len(at), dtype=bool)
        for k, name in enumerate(features):
            mask = j == k
            if mask.any():
                cell[mask], usable[mask] = _cells(grid, name, value[mask])
        at, j, rank, cell = at[usable], j[usable], rank[usable], cell[usable]
        order = np.lexsort((cell, rank, j, at))  # per (state, feature): the best one first
        at, j, cell = at[order], j[order], cell[order]
        first = np.ones(len(at), dtype=bool)
        first[1:] = (at[1:] != at[:-1]) | (j[1:] != j[:-1])
        self.cells[at[first], j[first]] = cell[first]

    def _read(
        self, con: sqlite3.Connection, table: str, hints: list[tuple[int, int, Hint]], found: tuple
    ) -> None:
        """The guesses of ``hints``, all of ``table``, appended to ``found``."""
        have = value_columns(con, table) if _exists(con, table) else []
        columns = sorted({h.path[0] for _, _, h in hints})
        if not set(columns) <= set(have):
            raise CodecFileError(f"the database's {table} lacks the columns its hints name")
        by_kind: dict[str, list[tuple[int, int, Hint]]] = {}
        for hint in hints:
            by_kind.setdefault(hint[2].kind, []).append(hint)
        at = {c: i for i, c in enumerate(columns)}
        names = ", ".join(quote(c) for c in (*_KEYS, TABLES[table], *columns))
        marks = ", ".join("?" * len(by_kind))
        sql = (
            f"SELECT {names} FROM {quote(table)} WHERE {quote(TABLES[table])} IN ({marks}) "
            f"LIMIT {MAX_EVENTS}"
        )
        states, features, ranks, values = found
        for agent, step, kind, *row in con.execute(sql, list(by_kind)):
            if not isinstance(step, int):
                continue
            parsed: dict[str, Any] = {}
            i = None
            for rank, j, h in by_kind[kind]:
                cell = row[at[h.path[0]]]
                if len(h.path) > 1:
                    if h.path[0] not in parsed:
                        parsed[h.path[0]] = _parsed(cell)
                    cell = parsed[h.path[0]]
                value = _at(cell, h.path[1:])
                if value is None:
                    continue
                if i is None:
                    i = self.index.setdefault((str(agent), step), len(self.index))
                states.append(i)
                features.append(j)
                ranks.append(rank)
                values.append(value)

    def of(self, agents: Sequence[object], steps: Sequence[object]) -> np.ndarray:
        """[n, features] int64: each state's guessed cells (``NO_HINT`` where none)."""
        out = np.full((len(agents), self.width), NO_HINT, dtype=np.int64)
        if not len(self.cells):
            return out
        index = self.index
        rows = np.fromiter(
            (
                index.get((str(a), s), -1) if isinstance(s, int) else -1
                for a, s in zip(agents, steps, strict=True)
            ),
            dtype=np.int64,
            count=len(agents),
        )
        known = rows >= 0
        out[known] = self.cells[rows[known]]
        return out
