"""The adaptive coding source: agent_states' features coded by ``context_coder`` with counts
learned while coding (no model in the file, no training), given what the tables restored before
them say (``state_context``: what happened at each state's step; ``state_hints``: the values they
log that are the state's own).

What it needs from the database is the schema fitted to it (``fitted_schema``: the declared
schema of ``conf/schema``, its vocabularies and normalization read off the states), which the
file's header carries like any other model's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from meaning_transform.codec import context_coder
from meaning_transform.codec.bounded import CodecFileError
from meaning_transform.codec.context_coder import Layout
from meaning_transform.codec.state_context import (
    ACTIONS,
    INCIDENTS,
    PREVIOUS_ACTIONS,
    AgentValues,
    EventContext,
    Source,
    combined,
    has_source,
    readable,
)
from meaning_transform.codec.state_hints import Hint, HintValues
from meaning_transform.errors import DataError
from meaning_transform.grid import MeaningGrid
from meaning_transform.schema import FeatureSchema
from meaning_transform.schema import table as schema_table


def fitted_schema(path: str | Path) -> FeatureSchema:
    """The project's declared agent-state schema fitted to the database ``path``: optional
    features it cannot fill dropped, vocabularies and normalization read from its valid rows."""
    from meaning_transform.api import load_config
    from meaning_transform.data.sqlite import load_sqlite

    declared = FeatureSchema.from_config(load_config().schema)
    table = load_sqlite(path, declared)
    bad = schema_table.invalid_rows(declared, table)
    empty = {k for k, m in bad.items() if m.all() and declared.feature(k).optional}
    table = {k: v for k, v in table.items() if k not in empty}
    keep = np.ones(len(table["step"]), dtype=bool)
    for name, mask in bad.items():
        if name not in empty:
            keep &= ~mask
    if not keep.any():
        raise DataError(f"{path}: no agent state holds valid values for every feature")
    table = {k: v[keep] for k, v in table.items()}
    return schema_table.fit(declared, table, valid=True)


#: the row contexts the adaptive coder reads, in the order they are tried; at most two (their
#: sets' numbers multiply: 32 x 32 = context_coder.MAX_CONTEXTS)
SOURCES = (ACTIONS, INCIDENTS)
KNOWN_SOURCES = {s.name: s for s in (ACTIONS, PREVIOUS_ACTIONS, INCIDENTS)}
MAX_SOURCES = 2


def usable_sources(con: sqlite3.Connection, tolerances: Mapping[str, float]) -> tuple[Source, ...]:
    """The ``SOURCES`` this database has, carried exactly (no declared tolerance on their
    tables: a decoder must read the very values the encoder read) and not too large to read."""
    found = []
    for source in SOURCES:
        loose = any(key.rpartition(".")[0] == source.table for key in tolerances)
        if not loose and has_source(con, source) and readable(con, source):
            found.append(source)
    return tuple(found[:MAX_SOURCES])


def sources_of(names: Any, where: str) -> tuple[Source, ...]:
    """The sources a file's header names; CodecFileError unless known, at most MAX_SOURCES."""
    if not isinstance(names, list) or len(names) > MAX_SOURCES:
        raise CodecFileError(f"{where}: field 'contexts' is not a list of at most {MAX_SOURCES}")
    if not all(isinstance(n, str) and n in KNOWN_SOURCES for n in names):
        raise CodecFileError(f"{where}: field 'contexts' names an unknown row context")
    return tuple(KNOWN_SOURCES[n] for n in names)


def anchor_columns(
    con: sqlite3.Connection, schema: FeatureSchema, coded: list[str], tolerances: Mapping
) -> tuple[str, ...]:
    """Continuous features coded from agent_states that ``agents`` also has (where an agent
    was born: a guess at its first state), carried exactly (no declared tolerance)."""
    columns = {r[1] for r in con.execute("PRAGMA table_info(agents)")}
    return tuple(
        f.name
        for f in schema.of_kind("continuous")
        if f.name in coded and f.name in columns and f"agents.{f.name}" not in tolerances
    )


def anchors_of(names: Any, schema: FeatureSchema, where: str) -> tuple[str, ...]:
    """The anchors a file's header names; CodecFileError unless distinct continuous features."""
    continuous = {f.name for f in schema.of_kind("continuous")}
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) and n in continuous for n in names)
        or len(set(names)) != len(names)
    ):
        raise CodecFileError(f"{where}: field 'anchors' is not a list of continuous features")
    return tuple(names)


class AdaptiveCoder:
    """Chunks' features coded by ``context_coder`` given the row contexts of ``events``, for
    the ``anchors`` first states guessed from the ``agents`` table, and states' cells guessed
    from the values other tables hold (``guesses``, ``state_hints``)."""

    workers = 1  # its many small steps hold the GIL: threads would not help

    def __init__(
        self,
        schema: FeatureSchema,
        events: list[EventContext],
        anchors: tuple[str, ...] = (),
        values: AgentValues | None = None,
        guesses: HintValues | None = None,
    ) -> None:
        self.discrete = tuple(f.kind != "continuous" for f in schema.features)
        self.events, self.anchors, self.values = events, anchors, values
        self.guesses = guesses
        self.steps = MeaningGrid(schema, 1).steps
        self.index = {f.name: j for j, f in enumerate(schema.features)}

    @classmethod
    def reading(
        cls,
        schema: FeatureSchema,
        con: sqlite3.Connection,
        sources: tuple[Source, ...],
        anchors: tuple[str, ...] = (),
        hints: tuple[Hint, ...] = (),
    ) -> AdaptiveCoder:
        """The coder of ``schema``'s features, its row contexts and guesses read from ``con``."""
        if anchors:
            have = {r[1] for r in con.execute("PRAGMA table_info(agents)")}
            if not set(anchors) <= have:
                raise CodecFileError("the database's agents table lacks the columns it names")
        values = AgentValues(con, anchors) if anchors else None
        events = []
        for source in sources:
            if not has_source(con, source):
                raise CodecFileError(f"the database has no {source.name} to read contexts from")
            events.append(EventContext(con, source))
            if not events[-1].usable:
                raise CodecFileError(f"{source.table} holds too many rows to read contexts from")
        names = [f.name for f in schema.features]
        guesses = HintValues(con, hints, MeaningGrid(schema, 1), names) if hints else None
        return cls(schema, events, anchors, values, guesses)

    def _layout(self, keys: Mapping[str, Any], lowest: Any) -> tuple[np.ndarray, Layout]:
        parts = [(e.of(keys["agent_id"], keys["step_number"]), e.size) for e in self.events]
        context, size = combined(parts, len(keys["agent_id"]))
        return context, Layout(self.discrete, size, tuple(int(v) for v in lowest))

    def _first(self, keys: Mapping[str, Any], lowest: Any, highest: Any) -> np.ndarray | None:
        """Each state's first-state base: its agent's ``agents`` value on the grid, less half
        the first-state bins, kept within the chunk's range (else the feature's lowest)."""
        if self.values is None:
            return None
        lo, hi = np.asarray(lowest, dtype=np.int64), np.asarray(highest, dtype=np.int64)
        base = np.tile(lo, (len(keys["agent_id"]), 1))
        values = self.values.of(keys["agent_id"])
        for a, name in enumerate(self.anchors):
            j = self.index[name]
            guess = np.rint(np.clip(values[:, a] / self.steps[name], -(2.0**50), 2.0**50))
            known = np.isfinite(guess)
            cell = np.where(known, guess, 0).astype(np.int64) - context_coder.FIRST // 2
            base[:, j] = np.where(known, np.clip(cell, lo[j] - context_coder.FIRST, hi[j]), lo[j])
        return base

    def _hint(self, keys: Mapping[str, Any]) -> np.ndarray | None:
        """Each state's cells guessed from other tables' values (None: no hints)."""
        if self.guesses is None:
            return None
        return self.guesses.of(keys["agent_id"], keys["step_number"])

    def encode(
        self, symbols: np.ndarray, flag: np.ndarray, keys: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """(no latent words, symbol words, estimated bits) of a chunk's grid symbols."""
        lowest, highest = symbols.min(axis=0), symbols.max(axis=0)
        context, layout = self._layout(keys, lowest)
        first, hint = self._first(keys, lowest, highest), self._hint(keys)
        try:
            words, bits = context_coder.encode(symbols, flag, context, layout, first, hint)
        except ValueError as e:  # a change too large for an escape (beyond 2**30 cells)
            raise DataError(f"states cannot be coded ({str(e).splitlines()[0]})") from None
        return np.zeros(0, dtype=np.uint32), words, bits

    def decode(
        self,
        z_words: np.ndarray,
        x_words: np.ndarray,
        flag: np.ndarray,
        keys: Mapping[str, Any],
        ranges: list[list[int]],
    ) -> np.ndarray:
        """The grid symbols of a chunk; ValueError if its words do not fit."""
        if len(z_words):
            raise ValueError("an adaptive chunk has no latent stream")
        lowest, highest = [r[0] for r in ranges], [r[1] for r in ranges]
        context, layout = self._layout(keys, lowest)
        first, hint = self._first(keys, lowest, highest), self._hint(keys)
        return context_coder.decode(x_words, flag, context, layout, first, hint)
