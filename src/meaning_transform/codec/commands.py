"""compress / decompress / verify: a whole simulation.db <-> a .mtc file.

``compress`` reads one consistent snapshot of the database and writes every table: each table
but ``agent_states`` exactly, block by block (``tables``); ``agent_states`` with its features
coded on the meaning grid by an integer coding model and its keys and other columns exactly
(``states``); the schema's SQL and settings in the header. ``decompress`` recreates every
object (tables, then rows, then indexes, views and triggers), only through ``SchemaGuard``.
``verify`` decompresses to a temporary database and compares every table with the source by a
read of its own (``compare``).

Memory stays flat in the database size: blocks and chunks are read, coded and written one (or a
few) at a time. Outputs are written to a temp file beside the target and renamed when complete
(``io.atomic_write``), so a failure leaves nothing behind.
"""

from __future__ import annotations

import itertools
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from meaning_transform.codec.chunks import in_order
from meaning_transform.codec.compare import DatabasesDiffer, compare_databases
from meaning_transform.codec.container import MAX_CHUNK, Chunk, CodecFileError, Reader, Writer
from meaning_transform.codec.database import encode_tables
from meaning_transform.codec.model import CodingModel, choose_model, open_file_model
from meaning_transform.codec.schema_objects import (
    SQLITE_TABLES,
    SchemaObject,
    apply_settings,
    carried_tables,
    create_after_rows,
    create_tables,
    database_settings,
    schema_objects,
)
from meaning_transform.codec.source import (
    AGENTS,
    STATES,
    Layout,
    connect,
    consistent_source,
    count_states,
    layout_of,
)
from meaning_transform.codec.sql_guard import SchemaGuard
from meaning_transform.codec.states import (
    FileModel,
    StagedStates,
    coding_rows,
    decode_states,
    encode_states,
    read_known,
    row_order,
)
from meaning_transform.codec.table_rows import table_layout
from meaning_transform.codec.tables import flat_tolerances, restore_table
from meaning_transform.config import CODERS
from meaning_transform.errors import ConfigError, DataError
from meaning_transform.io import atomic_write, check_input, check_output


class Progress:
    """One stderr line per chunk when stderr is a terminal (a rewritten line), else silent."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total, self.done = what, total, 0
        self.start = time.perf_counter()
        self.live = sys.stderr.isatty()

    def update(self, n: int) -> None:
        """``n`` more states done."""
        self.done += n
        if self.live:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            total = f"/{self.total:,}" if self.total else ""
            print(
                f"\r{self.what}: {self.done:,}{total} states ({rate:,.0f}/s)",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        """End the progress line."""
        if self.live and self.done:
            print(file=sys.stderr)


def _write(target: Path, write: Any, progress: Progress, overwrite: bool) -> None:
    """``write(tmp)`` then rename onto ``target`` (nothing is left on failure; without
    ``overwrite`` the target is created exclusively); end the bar."""
    try:
        atomic_write(target, write, exclusive=not overwrite)
    finally:
        progress.close()


# ---------------------------------------------------------------------- compress
def compress(
    data_path: str,
    out: str,
    ckpt_path: str | None = None,
    embed_model: bool = True,
    chunk_size: int = 131072,
    overwrite: bool = False,
    trusted: Any = (),
    tolerances: Any = None,
    coder: str = "auto",
    fit_seconds: float = 60.0,
) -> dict[str, Any]:
    """Code the whole database ``data_path`` into ``out``; returns statistics. ``coder``
    (without a checkpoint): ``auto`` / ``adaptive`` (no model: the adaptive context coder),
    ``packaged``, ``fit`` (a model trained within ``fit_seconds``; see
    ``codec.model.choose_model``)."""
    if coder not in CODERS:
        raise ConfigError(f"coder={coder!r} is invalid: expected one of {CODERS}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool):
        raise ConfigError(f"chunk_size must be an integer, got {chunk_size!r}")
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ConfigError(f"chunk_size={chunk_size} is invalid: expected 1..{MAX_CHUNK}")
    declared = flat_tolerances(tolerances)
    check_input(data_path, "data.path")
    if ckpt_path:
        check_input(ckpt_path, "ckpt_path")
    target = check_output(out, overwrite, {"data.path": data_path, "ckpt_path": ckpt_path})
    start = time.perf_counter()
    stats: dict[str, Any] = {"states": 0, "estimated_bits": 0.0, "table_bytes": {}}
    with consistent_source(data_path) as snapshot, closing(connect(snapshot)) as con:
        objects = schema_objects(con, str(data_path))
        _check_tolerances(declared, objects)
        settings = database_settings(con)
        total = count_states(con)
        if not total:  # nothing for the states' coders to learn from or code
            raise DataError(
                f"data.path={data_path}: table {STATES!r} has no rows; the codec archives "
                "databases with agent states (use zstd or xz for this one)"
            )
        coding = choose_model(
            con, snapshot, str(data_path), ckpt_path, trusted, coder, embed_model, fit_seconds,
            declared,
        )  # fmt: skip
        layout = layout_of(con, str(data_path), coding.schema)
        has_rowid = table_layout(con, STATES).rowid is not None
        order = row_order(con, has_rowid, layout.has_agents)
        known = read_known(con)
        tables = [t for t in carried_tables(objects) if t != STATES]
        header = {
            "model": coding.header(),
            "schema": coding.schema.to_dict(),
            "context": coding.context,
            "states": {
                "columns": layout.columns,
                "features": layout.features,
                "agent_features": layout.agent_features,
                "row_order": order,
                "rows": total,
            },
            "objects": [o.to_dict() for o in objects],
            "settings": settings,
            "tables": tables,
            "tolerances": declared,
            "chunk_size": chunk_size,
        }
        blob = coding.blob()
        stats.update(model=coding.describe(), model_bytes=len(blob), rows=0)
        progress = Progress("compress", total)

        def write(tmp: str) -> None:
            stats["states"], stats["estimated_bits"], progress.done = 0, 0.0, 0
            with open(tmp, "wb") as fh:
                writer = Writer(fh, header, blob)
                carried = set(carried_tables(objects))
                _write_blocks(writer, con, objects, declared, {*SQLITE_TABLES, STATES}, stats)
                _write_states(
                    writer, con, coding, layout, order, known, chunk_size, stats, progress
                )
                _write_blocks(writer, con, objects, declared, carried - set(SQLITE_TABLES), stats)
                writer.close()

        _write(target, write, progress, overwrite)
    stats["seconds"] = time.perf_counter() - start
    stats["bytes"] = target.stat().st_size
    stats["source_bytes"] = Path(data_path).stat().st_size
    return stats


def _check_tolerances(declared: dict[str, float], objects: list[SchemaObject]) -> None:
    tables = {o.name for o in objects if o.kind == "table"}
    for key in declared:
        table = key.rpartition(".")[0]
        if table == STATES:
            raise ConfigError(
                f"tolerances: {key}: agent_states' tolerances are the schema's "
                "(schema.features.<name>.tolerance), not declared here"
            )
        if table not in tables:
            raise ConfigError(f"tolerances: {key}: the database has no table {table!r}")


def _write_blocks(
    writer: Writer,
    con: sqlite3.Connection,
    objects: list[SchemaObject],
    tolerances: dict[str, float],
    skip: set[str],
    stats: dict[str, Any],
) -> None:
    """Every block of the carried tables not in ``skip``, counted per table."""
    for table, block in encode_tables(con, objects, tolerances, skip=skip):
        size = writer.block(table, block)
        stats["table_bytes"][table] = stats["table_bytes"].get(table, 0) + size


def _write_states(
    writer: Writer,
    con: sqlite3.Connection,
    coding: CodingModel,
    layout: Layout,
    order: str,
    known: dict[str, list[Any]],
    chunk_size: int,
    stats: dict[str, Any],
    progress: Progress,
) -> None:
    """``agent_states`` chunk by chunk (a few in flight: ``chunks.in_order``)."""
    coder = coding.coder(con)

    def code(rows: dict[str, Any]) -> tuple[Chunk, float]:
        return encode_states(coding.grid, coder, layout, order, rows, known)

    size = 0
    rows = coding_rows(con, layout, order, chunk_size)
    with closing(rows):
        for chunk, estimated in in_order(code, rows, coder.workers):
            size += writer.chunk(chunk)
            stats["states"] += chunk.meta["n"]
            stats["estimated_bits"] += estimated
            progress.update(chunk.meta["n"])
    stats["table_bytes"][STATES] = size


# ---------------------------------------------------------------------- decompress
def decompress(
    src: str, out: str, ckpt_path: str | None = None, overwrite: bool = False, trusted: Any = ()
) -> dict[str, Any]:
    """Restore ``src`` (.mtc) into a new SQLite database ``out``; returns statistics."""
    path = check_input(src, "in")
    if ckpt_path:
        check_input(ckpt_path, "ckpt_path")
    target = check_output(out, overwrite, {"in": src, "ckpt_path": ckpt_path})
    with open(path, "rb") as fh:
        reader = Reader(fh, str(src))
        file_model = open_file_model(reader, ckpt_path, trusted)
        start = time.perf_counter()  # coding speed: after the model is loaded
        progress = Progress("decompress", reader.num_states)
        stats: dict[str, Any] = {}
        _write(
            target, lambda tmp: stats.update(restore(reader, file_model, tmp, progress)),
            progress, overwrite,
        )  # fmt: skip
    stats["seconds"] = time.perf_counter() - start
    return stats


def restore(reader: Reader, file_model: FileModel, path: str, progress: Progress) -> dict:
    """Write the database ``reader`` holds into the new file ``path``; rows per table."""
    header, where = reader.header, reader.name
    objects = [SchemaObject.from_dict(d, f"{where}: header") for d in header["objects"]]
    layout = _states_layout(header, objects, where)
    order = header["states"]["row_order"]
    rows: dict[str, int] = {}
    with closing(sqlite3.connect(path)) as con, tempfile.TemporaryDirectory() as folder:
        # a journal in memory, not none: restoring a block rolls back to a savepoint on text
        # that is not UTF-8 (table_rows.write_rows), which needs one
        con.execute("PRAGMA journal_mode = MEMORY")
        con.execute("PRAGMA synchronous = OFF")
        apply_settings(con, header["settings"], where)
        guard = SchemaGuard(con, where)
        staged = StagedStates(folder, layout.columns, order)
        try:
            create_tables(guard, objects)
            con.commit()
            known: dict[str, list[Any]] | None = None
            for kind, item, _ in _in_restore_order(reader):
                if kind == "table":
                    table, blocks = item
                    rows[table] = restore_table(con, table, blocks, where)
                    continue
                known = read_known(con) if known is None else known
                coder = file_model.coder(con)
                for decoded in _decode_chunks(file_model, coder, layout, order, item, known):
                    staged.append(decoded)
                    progress.update(len(decoded["agent_id"]))
                rows[STATES] = staged.finish(con)
            if header["states"]["rows"] and STATES not in rows:
                raise CodecFileError(f"{where} holds no agent_states chunks")
            for table in header["tables"]:  # tables without blocks are empty (SQLite's own
                if table not in rows:  # exist empty only once prepared)
                    rows[table] = restore_table(con, table, (), where)
            create_after_rows(guard, objects)
            con.commit()
        finally:
            guard.close()
            staged.close()
    return {"rows": rows, "states": rows.get(STATES, 0)}


def _in_restore_order(reader: Reader) -> Iterator[tuple[str, Any, str]]:
    """The file's sections grouped, lazily: ("table", (name, its blocks), where) per table and
    ("states", its (chunk, where) pairs, where) once; each group must be together, tables in
    the header's order."""
    tables, seen = reader.header["tables"], []

    def key(section: tuple[str, Any, str]) -> str:
        kind, item, _ = section
        return STATES if kind == "states" else item[0]

    for name, group in itertools.groupby(reader.sections(), key=key):
        first = next(group)
        at = first[2]
        if name in seen or (
            name != STATES
            and tables.index(name) < max((tables.index(t) for t in seen if t != STATES), default=-1)
        ):
            raise CodecFileError(f"{at}: sections of {name!r} are not together or out of order")
        seen.append(name)
        rest = itertools.chain([first], group)  # noqa: B031 - used once, before the next group
        if name == STATES:
            yield "states", ((item, where) for _, item, where in rest), at
        else:
            yield "table", (name, (item[1] for _, item, _ in rest)), at


def _decode_chunks(
    file_model: FileModel,
    coder: Any,
    layout: Layout,
    order: str,
    chunks: Iterator[tuple[Chunk, str]],
    known: dict[str, list[Any]],
) -> Iterator[dict[str, Any]]:
    def decode(item: tuple[Chunk, str]) -> dict[str, Any]:
        return decode_states(file_model, coder, layout, order, item[0], known, item[1])

    yield from in_order(decode, chunks, coder.workers)


def _states_layout(header: dict[str, Any], objects: list[SchemaObject], where: str) -> Layout:
    """The agent_states layout the header describes (checked against its schema objects)."""
    states = header["states"]
    if not any(o.kind == "table" and o.name == STATES for o in objects):
        raise CodecFileError(f"{where}: the header's schema has no {STATES!r} table")
    agents = any(o.kind == "table" and o.name == AGENTS for o in objects)
    return Layout(states["columns"], states["features"], states["agent_features"], agents)


# ---------------------------------------------------------------------- verify
def verify(
    src: str, data_path: str, ckpt_path: str | None = None, trusted: Any = ()
) -> dict[str, Any]:
    """Decompress ``src`` to a temporary database and compare it with ``data_path``, every
    table by a read of its own (``compare``): exact, except agent_states' coded features
    (within the schema's tolerances) and columns with declared tolerances. Raises
    VerifyError naming the first difference."""
    path = check_input(src, "in")
    check_input(data_path, "data.path")
    with open(path, "rb") as fh, tempfile.TemporaryDirectory() as folder:
        reader = Reader(fh, str(src))
        file_model = open_file_model(reader, ckpt_path, trusted)
        restored = str(Path(folder) / "restored.db")
        restore(reader, file_model, restored, Progress("verify", 0))
        tolerances = dict(reader.header["tolerances"])
        for f in file_model.schema.of_kind("continuous"):
            if f.name in reader.header["states"]["features"]:
                tolerances[f"{STATES}.{f.name}"] = f.tolerance
        with (
            consistent_source(data_path) as snapshot,
            closing(connect(snapshot)) as a,
            closing(sqlite3.connect(restored)) as b,
        ):
            try:
                rows = compare_databases(a, b, tolerances)
            except DatabasesDiffer as e:
                raise VerifyError(str(e)) from None
    return {"rows": rows, "states": rows.get(STATES, 0), "tolerances": tolerances}


class VerifyError(ValueError):
    """A decoded file differs from the database beyond what the codec guarantees."""

    prefix = "verify failed: "  # how the command line reports it
