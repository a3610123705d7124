"""``agent_states`` in a whole-database archive: rows coded in chunks by the integer coding
model (features) and ``state_keys`` (keys and other columns), and restored in the source's row
order.

Rows are coded in (agent_id, step_number, rowid) order, where each state's previous one is the
row before. The source usually stores them step by step (AgentFarm writes a step's states
together), so ``row_order`` records how to put them back:

- ``step_agent``: the source's rowids are 1..n in (step_number, the agent's row in ``agents``)
  order, checked at compress: nothing more is stored;
- ``rowid``: each row's rowid is carried (any other order, or rowids with gaps);
- ``none``: a WITHOUT ROWID table, whose order is its primary key's.

Decoded chunks go to a staging database in coding order, then into ``agent_states`` with one
``INSERT ... SELECT ... ORDER BY`` (SQLite sorts on disk: memory stays flat).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from meaning_transform.codec.bounded import CodecFileError
from meaning_transform.codec.chunks import decode_chunk, encode_chunk, symbols_crc, workers_for
from meaning_transform.codec.container import Chunk
from meaning_transform.codec.source import (
    AGENTS,
    STATES,
    Layout,
    StatesWriter,
    feature_table,
)
from meaning_transform.codec.sql_guard import quote
from meaning_transform.codec.state_keys import decode_state_keys, encode_state_keys
from meaning_transform.errors import DataError
from meaning_transform.grid import MeaningGrid
from meaning_transform.models.integer_model import IntegerEncoder, IntegerModel
from meaning_transform.schema import FeatureSchema
from meaning_transform.schema.declaration import MAX_MAGNITUDE
from meaning_transform.schema.table import encode

ROW_ORDERS = ("step_agent", "rowid", "none")
#: the key of a chunk's extra columns: a real column, a coded feature's NULL mask, the rowid
COLUMN, NULLS, ROWID = "col:", "null:", "rowid"
ROWID_KEY = "\0rowid"  # the rowid in a chunk's rows (not a name SQL can give a column)
#: an agent's row in ``agents`` (its first, should the table list it twice)
_AGENT_RANK = f"(SELECT MIN(a.rowid) FROM {AGENTS} a WHERE a.agent_id = s.agent_id)"


class IntegerCoder:
    """Chunks' features coded by an integer coding model (``chunks``): latents and symbols."""

    def __init__(self, model: IntegerModel, encoder: IntegerEncoder | None = None) -> None:
        self.model, self.encoder = model, encoder
        self.workers = workers_for(model)

    def encode(
        self, symbols: np.ndarray, flag: np.ndarray, keys: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """(latent words, symbol words, estimated bits) of a chunk's grid symbols."""
        assert self.encoder is not None
        try:
            coded = encode_chunk(self.model, symbols, flag, self.encoder.offsets(symbols, flag))
        except ValueError as e:  # escapes or latents too far out to code
            raise DataError(
                f"states cannot be coded by this model ({str(e).splitlines()[0]}): values far "
                "outside the range it was trained on"
            ) from None
        return coded.z_words, coded.x_words, coded.estimated_bits

    def decode(
        self,
        z_words: np.ndarray,
        x_words: np.ndarray,
        flag: np.ndarray,
        keys: Mapping[str, Any],
        ranges: list[list[int]],
    ) -> np.ndarray:
        """The grid symbols of a chunk; ValueError if its streams do not fit the model."""
        return decode_chunk(self.model, z_words, x_words, flag)


@dataclass(frozen=True)
class FileModel:
    """What decodes a file: its integer coding model (None: the adaptive coder, with the row
    contexts it names), and the schema and grid of its states."""

    model: IntegerModel | None
    schema: FeatureSchema
    grid: MeaningGrid
    sources: tuple[Any, ...] = ()  # state_context.Source of the adaptive coder
    anchors: tuple[str, ...] = ()  # its features whose first states agents' columns guess
    hints: tuple[Any, ...] = ()  # state_hints.Hint: other tables' values it guesses states from

    def coder(self, con: sqlite3.Connection) -> Any:
        """The chunks' coder, its row contexts read from ``con`` (the tables restored)."""
        if self.model is not None:
            return IntegerCoder(self.model)
        from meaning_transform.codec.adaptive import AdaptiveCoder

        return AdaptiveCoder.reading(self.schema, con, self.sources, self.anchors, self.hints)


def row_order(con: sqlite3.Connection, has_rowid: bool, has_agents: bool) -> str:
    """How ``agent_states``' rows go back in the source's order (see the module docstring)."""
    if not has_rowid:
        return "none"
    rank = _AGENT_RANK if has_agents else "NULL"
    differs = con.execute(
        f"SELECT EXISTS (SELECT 1 FROM (SELECT s.rowid AS r, ROW_NUMBER() OVER (ORDER BY "
        f"s.step_number, {rank}, s.agent_id, s.step_number, s.rowid) AS p FROM {STATES} s) "
        "WHERE r != p)"
    ).fetchone()[0]
    return "rowid" if differs else "step_agent"


def encode_states(
    grid: MeaningGrid,
    coder: Any,
    layout: Layout,
    order: str,
    rows: dict[str, Any],
    known: Mapping[str, Sequence[Any]],
) -> tuple[Chunk, float]:
    """One chunk of rows (coding order) -> (Chunk, the coder's estimated bits for its states);
    ``coder``: an ``IntegerCoder`` or ``adaptive.AdaptiveCoder``."""
    schema = grid.schema
    table, nulls = feature_table(schema, rows)
    symbols = grid.encode(encode(schema, table))
    agents = rows["agent_id"]
    flag = same_agent(agents)
    z_words, x_words, estimated = coder.encode(symbols, flag, rows)
    others = {COLUMN + c: rows[c] for c in layout.others}
    for name, mask in nulls.items():
        others[NULLS + name] = mask.astype(int).tolist()
    if order == "rowid":
        others[ROWID] = list(rows[ROWID_KEY])
    keys = encode_state_keys({k: rows[k] for k in layout.keys}, others, known)
    meta = {
        "n": len(agents),
        "symbols_crc": symbols_crc(symbols),
        "estimated": estimated,
        "ranges": np.stack([symbols.min(axis=0), symbols.max(axis=0)], axis=1).tolist(),
    }
    return Chunk(meta, z_words, x_words, keys), estimated


def same_agent(agents: Sequence[Any]) -> np.ndarray:
    """Per row, whether the row before is the same agent (its previous state)."""
    flag = np.zeros(len(agents), dtype=bool)
    if len(agents) > 1:
        a = np.empty(len(agents), dtype=object)
        a[:] = list(agents)
        flag[1:] = a[1:] == a[:-1]
    return flag


def decode_states(
    file_model: FileModel,
    coder: Any,
    layout: Layout,
    order: str,
    chunk: Chunk,
    known: Mapping[str, Sequence[Any]],
    where: str,
) -> dict[str, Any]:
    """A chunk's rows as columns: keys and other columns as lists, features as Arrow arrays
    (NULLs masked), ``ROWID_KEY`` when rowids are carried; CodecFileError if it does not
    decode to states within the ranges it declares. ``coder``: ``file_model.coder(...)``."""
    schema, grid = file_model.schema, file_model.grid
    n = int(chunk.meta["n"])
    keys, others = decode_state_keys(chunk.columns, n, known, where)
    expected = {COLUMN + c for c in layout.others} | ({ROWID} if order == "rowid" else set())
    masks = {k for k in others if k.startswith(NULLS)}
    if set(others) - masks != expected or set(keys) != set(layout.keys):
        raise CodecFileError(f"{where}: its columns are not those the header lists")
    try:
        flag = same_agent(keys["agent_id"])
        symbols = coder.decode(chunk.z_words, chunk.x_words, flag, keys, chunk.meta["ranges"])
    except (ValueError, KeyError, IndexError, OverflowError) as e:
        raise CodecFileError(f"{where} does not decode ({str(e).splitlines()[0]})") from None
    if symbols_crc(symbols) != chunk.meta["symbols_crc"]:
        raise CodecFileError(f"{where} decodes to other states than were coded (corrupted)")
    check_ranges(symbols, chunk.meta["ranges"], grid, where)
    native = grid.native(symbols)
    rows: dict[str, Any] = dict(keys)
    rows.update({c[len(COLUMN) :]: v for c, v in others.items() if c.startswith(COLUMN)})
    if order == "rowid":
        rows[ROWID_KEY] = others[ROWID]
    for j, f in enumerate(schema.features):
        if f.name in layout.features:
            rows[f.name] = arrow_feature(f, native[:, j], others.get(NULLS + f.name))
    return rows


def check_ranges(
    symbols: np.ndarray, ranges: list[list[int]], grid: MeaningGrid, where: str
) -> None:
    """CodecFileError unless every decoded symbol is in its declared range, and every declared
    range decodes to values a database can hold (categories of the vocabulary, 0/1, finite
    numbers of at most MAX_MAGNITUDE)."""
    lo, hi = np.asarray(ranges, dtype=np.int64).T
    if ((symbols < lo) | (symbols > hi)).any():
        raise CodecFileError(f"{where} decodes to values outside the ranges it declares")
    vocab = np.asarray(grid.vocab_sizes(), dtype=np.int64)
    discrete = vocab > 0
    if ((lo < 0) & discrete).any() or ((hi >= vocab) & discrete).any():
        raise CodecFileError(f"{where} declares categories beyond the model's vocabularies")
    ends = grid.native(np.stack([lo, hi]))
    if not np.isfinite(ends).all() or (np.abs(ends) > MAX_MAGNITUDE).any():
        raise CodecFileError(f"{where} declares values beyond what a database holds")


def arrow_feature(f: Any, col: np.ndarray, mask: list[Any] | None) -> Any:
    """One decoded feature column as values to write: an Arrow array (a list for categories,
    whose values are checked when written)."""
    null = None if mask is None else np.asarray(mask, dtype=bool)
    if f.kind == "categorical":
        assert f.categories is not None
        values = [f.categories[c] for c in col.astype(np.int64).tolist()]
        if null is not None:
            values = [None if m else v for v, m in zip(values, null.tolist(), strict=True)]
        return values
    if f.kind == "binary":
        return pa.array(col.astype(np.int64), mask=null)
    return pa.array(np.asarray(col, dtype=np.float64), mask=null)


class StagedStates:
    """Decoded chunks written to a staging database in coding order, then moved into the
    output's ``agent_states`` in the source's row order (``finish``). Staging columns are
    named by position (``k``: coding position, ``r``: carried rowid, ``c<i>``: column i)."""

    def __init__(self, folder: str | Path, columns: list[str], order: str) -> None:
        self.path = str(Path(folder) / "staging.db")
        self.columns, self.order = columns, order
        self.names = [
            "k",
            *(["r"] if order == "rowid" else []),
            *map("c{}".format, range(len(columns))),
        ]
        self.con = sqlite3.connect(self.path)
        self.con.execute(f"CREATE TABLE staged ({', '.join(self.names)})")
        self.writer = StatesWriter(self.con, self.path, self.names, table="staged")
        self.rows = 0

    def append(self, rows: dict[str, Any]) -> None:
        """Append one decoded chunk."""
        n = len(rows["agent_id"])
        staged = {"k": pa.array(np.arange(self.rows, self.rows + n, dtype=np.int64))}
        if self.order == "rowid":
            staged["r"] = rows[ROWID_KEY]
        staged.update({f"c{i}": rows[c] for i, c in enumerate(self.columns)})
        self.writer.append(staged)
        self.rows += n

    def finish(self, out: sqlite3.Connection) -> int:
        """Insert every staged row into ``out``'s ``agent_states``; the number of rows."""
        self.writer.finish()
        self.con.commit()
        staged = ", ".join(f"s.c{i}" for i in range(len(self.columns)))
        target = ", ".join(quote(c) for c in self.columns)
        has_agents = out.execute(
            "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?", (AGENTS,)
        ).fetchone()
        step = f"s.c{self.columns.index('step_number')}"
        agent = f"s.c{self.columns.index('agent_id')}"
        rank = f"(SELECT MIN(a.rowid) FROM main.{AGENTS} a WHERE a.agent_id = {agent})"
        if self.order == "rowid":
            target, staged, by = f"rowid, {target}", f"s.r, {staged}", "s.r"
        else:
            by = f"{step}, {rank if has_agents else 'NULL'}, s.k"
        out.execute("ATTACH DATABASE ? AS stage", (self.path,))
        try:
            out.execute(
                f"INSERT INTO main.{STATES} ({target}) SELECT {staged} FROM stage.staged s "
                f"ORDER BY {by}"
            )
            out.commit()
        finally:
            out.execute("DETACH DATABASE stage")
        return self.rows

    def close(self) -> None:
        """Stop the writer and close the staging database."""
        with closing(self.con):
            self.writer.close()


def read_known(con: sqlite3.Connection) -> dict[str, list[Any]]:
    """The ids the keys coder may refer to: ``agents.agent_id`` and
    ``simulations.simulation_id`` in rowid order (restored before the states)."""
    known = {}
    for key, table in (("agent_id", AGENTS), ("simulation_id", "simulations")):
        exists = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        columns = [r[1] for r in con.execute(f"PRAGMA table_info({quote(table)})")]
        if exists and key in columns:
            known[key] = [
                r[0] for r in con.execute(f"SELECT {quote(key)} FROM {table} ORDER BY rowid")
            ]
    return known


def coding_rows(
    con: sqlite3.Connection, layout: Layout, order: str, chunk_size: int
) -> Iterator[dict[str, list[Any]]]:
    """Chunks of ``agent_states`` rows in coding order, with agent features joined and the
    rowid (``ROWID_KEY``) when it is carried."""
    cols = [f"s.{quote(c)}" for c in layout.columns]
    cols += [  # a subquery, not a join: an agent listed twice must not repeat its states
        f"(SELECT a.{quote(c)} FROM {AGENTS} a WHERE a.agent_id = s.agent_id ORDER BY a.rowid "
        "LIMIT 1)"
        for c in layout.agent_features
    ]
    names = layout.columns + layout.agent_features
    if order == "rowid":
        cols.append("s.rowid")
        names = [*names, ROWID_KEY]
    tie = ", s.rowid" if order != "none" else ""
    sql = f"SELECT {', '.join(cols)} FROM {STATES} s ORDER BY s.agent_id, s.step_number{tie}"
    with closing(con.execute(sql)) as cur:
        while rows := cur.fetchmany(chunk_size):
            yield dict(zip(names, (list(c) for c in zip(*rows, strict=True)), strict=True))
