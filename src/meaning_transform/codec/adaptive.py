"""The adaptive coding source: agent_states' features coded by ``context_coder`` with counts
learned while coding (no model in the file, no training), given what the tables restored before
them say (``state_context``).

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
    EventContext,
    Source,
    combined,
    has_source,
    readable,
)
from meaning_transform.errors import DataError
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


class AdaptiveCoder:
    """Chunks' features coded by ``context_coder`` given the row contexts of ``events``."""

    workers = 1  # its many small steps hold the GIL: threads would not help

    def __init__(self, discrete: tuple[bool, ...], events: list[EventContext]) -> None:
        self.discrete, self.events = discrete, events

    @classmethod
    def reading(
        cls, schema: FeatureSchema, con: sqlite3.Connection, sources: tuple[Source, ...]
    ) -> AdaptiveCoder:
        """The coder of ``schema``'s features, its row contexts read from ``con``."""
        events = []
        for source in sources:
            if not has_source(con, source):
                raise CodecFileError(f"the database has no {source.name} to read contexts from")
            events.append(EventContext(con, source))
            if not events[-1].usable:
                raise CodecFileError(f"{source.table} holds too many rows to read contexts from")
        return cls(tuple(f.kind != "continuous" for f in schema.features), events)

    def _layout(self, keys: Mapping[str, Any], lowest: Any) -> tuple[np.ndarray, Layout]:
        parts = [(e.of(keys["agent_id"], keys["step_number"]), e.size) for e in self.events]
        context, size = combined(parts, len(keys["agent_id"]))
        return context, Layout(self.discrete, size, tuple(int(v) for v in lowest))

    def encode(
        self, symbols: np.ndarray, flag: np.ndarray, keys: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """(no latent words, symbol words, estimated bits) of a chunk's grid symbols."""
        context, layout = self._layout(keys, symbols.min(axis=0))
        try:
            words, bits = context_coder.encode(symbols, flag, context, layout)
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
        context, layout = self._layout(keys, [r[0] for r in ranges])
        return context_coder.decode(x_words, flag, context, layout)
