"""compress / decompress / verify: a simulation.db <-> a .mtc file, chunk by chunk.

Memory stays flat in the database size: states are read, coded and written one chunk
(``chunk_size`` states) at a time. Outputs are written to a temp file beside the target and
renamed when complete (``io.atomic_write``), so a failure leaves nothing behind.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from meaning_transform.codec.chunks import (
    decode_chunk,
    deterministic_threads,
    encode_chunk,
    in_order,
    symbols_crc,
    workers_for,
)
from meaning_transform.codec.columns import decode_columns, encode_columns
from meaning_transform.codec.container import MAX_CHUNK, Chunk, CodecFileError, Reader, Writer
from meaning_transform.codec.model import (
    build_model,
    checkpoint_hash,
    model_bytes,
    read_embedded,
    read_model,
)
from meaning_transform.codec.source import (
    AGENTS,
    STATES,
    Layout,
    SlowPath,
    StatesWriter,
    connect,
    consistent_source,
    count_states,
    create_output,
    feature_table,
    layout_of,
    read_arrays,
    read_chunks,
    read_states,
    table_columns,
)
from meaning_transform.codec.sql_guard import quote
from meaning_transform.errors import CheckpointError, ConfigError, DataError
from meaning_transform.io import atomic_write, check_input, check_output
from meaning_transform.schema.declaration import MAX_MAGNITUDE
from meaning_transform.schema.table import encode

NULL_PREFIX = "null:"  # other-column name of a coded feature's NULL mask


# ---------------------------------------------------------------------- arguments
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
    ckpt_path: str,
    data_path: str,
    out: str,
    embed_model: bool = False,
    chunk_size: int = 131072,
    overwrite: bool = False,
    trusted: Any = (),
) -> dict[str, Any]:
    """Code ``data_path``'s agent_states (and agent types) into ``out``; returns statistics."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool):
        raise ConfigError(f"chunk_size must be an integer, got {chunk_size!r}")
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ConfigError(f"chunk_size={chunk_size} is invalid: expected 1..{MAX_CHUNK}")
    if not ckpt_path:
        raise ConfigError("ckpt_path= is required: a checkpoint trained with compression=lossless")
    check_input(data_path, "data.path")
    check_input(ckpt_path, "ckpt_path")
    target = check_output(out, overwrite, {"data.path": data_path, "ckpt_path": ckpt_path})
    ckpt, sha256 = read_model(ckpt_path)
    module = build_model(ckpt, f"checkpoint {str(ckpt_path)!r}", trusted)
    schema = module.schema
    start = time.perf_counter()
    stats: dict[str, Any] = {"states": 0, "estimated_bits": 0.0, "model_bytes": 0}
    with consistent_source(data_path) as snapshot, closing(connect(snapshot)) as con:
        layout = layout_of(con, data_path, schema)
        total = count_states(con)
        if total == 0:
            raise DataError(f"{data_path}: agent_states has no rows")
        header = {
            "model": {
                "sha256": sha256,
                "ckpt_path": str(Path(ckpt_path).resolve()),
                "embedded": bool(embed_model),
            },
            "schema": schema.to_dict(),
            "context": module.context,
            "layout": layout.to_dict(),
            "chunk_size": chunk_size,
            "source": {"path": str(Path(data_path).resolve()), "states": total},
        }
        blob = model_bytes(module) if embed_model else b""
        stats["model_bytes"] = len(blob)
        progress = Progress("compress", total)

        def write_from(tmp: str, source: Iterator[dict[str, Any]]) -> None:
            stats["states"], stats["estimated_bits"], progress.done = 0, 0.0, 0
            with open(tmp, "wb") as fh, deterministic_threads(), closing(source):
                writer = Writer(fh, header, blob)
                for chunk, estimated in in_order(
                    lambda rows: _encode(module, layout, rows), source, workers_for(module)
                ):
                    writer.chunk(chunk)
                    stats["states"] += chunk.meta["n"]
                    stats["estimated_bits"] += estimated
                    progress.update(chunk.meta["n"])
                writer.close()

        def write(tmp: str) -> None:
            try:  # Arrow columns; the sqlite3 rows when a column's values need it
                write_from(tmp, read_arrays(con, snapshot, layout, schema, chunk_size))
            except SlowPath:
                write_from(tmp, read_chunks(con, layout, chunk_size))

        _write(target, write, progress, overwrite)
    stats["seconds"] = time.perf_counter() - start
    stats["bytes"] = target.stat().st_size
    return stats


def _encode(module: Any, layout: Any, rows: dict[str, list[Any]]) -> tuple[Chunk, float]:
    """One chunk of database rows -> (Chunk, the model's estimated bits for it)."""
    schema, codec = module.schema, module.codec
    table, nulls = feature_table(schema, rows)
    symbols = codec.symbols(encode(schema, table))
    agents = rows["agent_id"]
    flag = _same_agent(agents)
    try:
        coded = encode_chunk(module, symbols, flag)
    except ValueError as e:  # escapes or latents too far out to code
        raise DataError(
            f"states cannot be coded by this model ({str(e).splitlines()[0]}): values far "
            "outside the range it was trained on"
        ) from None
    others = {c: rows[c] for c in layout.others}
    for name, mask in nulls.items():
        others[NULL_PREFIX + name] = mask.astype(int).tolist()
    columns = encode_columns({k: rows[k] for k in layout.keys}, others)
    meta = {
        "n": len(agents),
        "symbols_crc": coded.symbols_crc,
        "estimated": coded.estimated_bits,
        "ranges": np.stack([symbols.min(axis=0), symbols.max(axis=0)], axis=1).tolist(),
    }
    return Chunk(meta, coded.z_words, coded.x_words, columns), coded.estimated_bits


def _same_agent(agents: list[Any]) -> np.ndarray:
    """Per row, whether the row before is the same agent (its previous state)."""
    flag = np.zeros(len(agents), dtype=bool)
    if len(agents) > 1:
        a = np.empty(len(agents), dtype=object)
        a[:] = agents
        flag[1:] = a[1:] == a[:-1]
    return flag


# ---------------------------------------------------------------------- decompress
def _open_model(reader: Reader, ckpt_path: str | None, trusted: Any = ()) -> Any:
    """The file's model: embedded, or ``ckpt_path`` (default: the recorded path). Its hash is
    compared before anything is built from it."""
    recorded = reader.header["model"]
    if reader.model and not ckpt_path:
        where = f"{reader.name} (embedded model)"
        ckpt = read_embedded(reader.model, reader.name)
    else:
        path = ckpt_path or recorded["ckpt_path"]
        if not Path(path).is_file():
            raise CheckpointError(
                f"{reader.name} was coded with model {path!r}, which does not exist: pass "
                "ckpt_path=<that checkpoint> (or compress with embed_model=true)"
            )
        where = f"checkpoint {str(path)!r}"
        ckpt, _ = read_model(path)
    if checkpoint_hash(ckpt, where) != recorded["sha256"]:
        raise CheckpointError(
            f"{reader.name} was coded with another model (SHA-256 {recorded['sha256'][:12]}...); "
            "decompress with the checkpoint it was compressed with"
        )
    module = build_model(ckpt, where, trusted)
    _check_header_fits(reader, module)
    return module


def _check_header_fits(reader: Reader, module: Any) -> None:
    """CodecFileError unless the header's context and layout agree with the model."""
    header, layout = reader.header, reader.header["layout"]
    names = [f.name for f in module.schema.features]
    if (
        header["context"] != module.context
        or layout["features"] + layout["agent_features"]
        != [n for n in names if n in layout["features"] + layout["agent_features"]]
        or sorted(layout["features"] + layout["agent_features"]) != sorted(names)
    ):
        raise CodecFileError(f"{reader.name}: its header does not match the model's features")


def decoded_chunks(
    reader: Reader, module: Any, arrow: bool = False
) -> Iterator[dict[str, list[Any]]]:
    """Each chunk as database columns (keys, features, others) plus ``agents.<feature>``;
    with ``arrow``, features as Arrow arrays (NULLs masked) instead of lists."""

    def decode(numbered: tuple[int, Chunk]) -> dict[str, list[Any]]:
        return _decoded(reader, module, *numbered, arrow)

    yield from in_order(decode, enumerate(reader.chunks(), start=1), workers_for(module))


def _decoded(
    reader: Reader, module: Any, i: int, chunk: Chunk, arrow: bool
) -> dict[str, list[Any]]:
    """Chunk ``i`` as ``decoded_chunks`` gives it."""
    schema, codec = module.schema, module.codec
    layout = reader.header["layout"]
    n = int(chunk.meta["n"])
    where = f"{reader.name}: chunk {i}"
    try:
        keys, others = decode_columns(chunk.columns, n)
    except CodecFileError as e:
        raise CodecFileError(f"{where}: {e}") from None
    try:
        symbols = decode_chunk(module, chunk.z_words, chunk.x_words, _same_agent(keys["agent_id"]))
    except (ValueError, KeyError, IndexError, OverflowError) as e:
        raise CodecFileError(f"{where} does not decode ({str(e).splitlines()[0]})") from None
    if symbols_crc(symbols) != chunk.meta["symbols_crc"]:
        raise CodecFileError(
            f"{where} decodes to other states than were coded (checksum mismatch): the model "
            "computed different probabilities here, or the file is corrupted"
        )
    _check_ranges(symbols, chunk.meta["ranges"], codec, where)
    native = codec.grid.native(symbols)
    rows: dict[str, list[Any]] = {**keys}
    rows.update({c: v for c, v in others.items() if not c.startswith(NULL_PREFIX)})
    for j, f in enumerate(schema.features):
        col = native[:, j]
        name = f"{AGENTS}.{f.name}" if f.name in layout["agent_features"] else f.name
        mask = others.get(NULL_PREFIX + f.name)
        if arrow:
            rows[name] = _arrow_feature(f, col, mask)
            continue
        if f.kind == "categorical":
            assert f.categories is not None
            values: list[Any] = [f.categories[int(c)] for c in col]
        elif f.kind == "binary":
            values = col.astype(np.int64).tolist()
        else:
            values = col.tolist()
        if mask is not None:
            values = [None if m else v for v, m in zip(values, mask, strict=True)]
        rows[name] = values
    return rows


def _check_ranges(symbols: np.ndarray, ranges: list[list[int]], codec: Any, where: str) -> None:
    """CodecFileError unless every decoded symbol is in its declared range, and every declared
    range decodes to values a database can hold (categories of the vocabulary, 0/1, finite
    numbers of at most MAX_MAGNITUDE)."""
    lo, hi = np.asarray(ranges, dtype=np.int64).T
    if ((symbols < lo) | (symbols > hi)).any():
        raise CodecFileError(f"{where} decodes to values outside the ranges it declares")
    vocab = np.asarray(codec.grid.vocab_sizes(), dtype=np.int64)
    discrete = vocab > 0
    if ((lo < 0) & discrete).any() or ((hi >= vocab) & discrete).any():
        raise CodecFileError(f"{where} declares categories beyond the model's vocabularies")
    ends = codec.grid.native(np.stack([lo, hi]))
    if not np.isfinite(ends).all() or (np.abs(ends) > MAX_MAGNITUDE).any():
        raise CodecFileError(f"{where} declares values beyond what a database holds")


def _arrow_feature(f: Any, col: np.ndarray, mask: list[Any] | None) -> Any:
    """One decoded feature column as the Arrow array of the values ``decoded_chunks`` lists."""
    null = None if mask is None else np.asarray(mask, dtype=bool)
    if f.kind == "categorical":
        assert f.categories is not None
        values = [f.categories[c] for c in col.astype(np.int64).tolist()]
        if null is not None:
            values = [None if m else v for v, m in zip(values, null.tolist(), strict=True)]
        return values  # a list: its classes are checked when it is written
    if f.kind == "binary":
        return pa.array(col.astype(np.int64), mask=null)
    return pa.array(np.asarray(col, dtype=np.float64), mask=null)


def decompress(
    src: str,
    out: str,
    ckpt_path: str | None = None,
    overwrite: bool = False,
    trusted: Any = (),
) -> dict[str, Any]:
    """Restore ``src`` (.mtc) into a new SQLite database ``out``; returns statistics."""
    path = check_input(src, "in")
    if ckpt_path:
        check_input(ckpt_path, "ckpt_path")
    target = check_output(out, overwrite, {"in": src, "ckpt_path": ckpt_path})
    stats: dict[str, Any] = {"states": 0}
    with open(path, "rb") as fh:
        reader = Reader(fh, str(src))
        module = _open_model(reader, ckpt_path, trusted)
        start = time.perf_counter()  # coding speed: after the model is loaded
        layout = reader.header["layout"]
        progress = Progress("decompress", reader.num_states)

        def write(tmp: str) -> None:
            agents: dict[Any, Any] = {}
            with (
                closing(create_output(tmp, layout, reader.name)) as con,
                closing(StatesWriter(con, tmp, layout["columns"])) as states,
                deterministic_threads(),
            ):
                for rows in decoded_chunks(reader, module, arrow=True):
                    states.append(rows)
                    _collect_agents(agents, rows, layout)
                    stats["states"] += len(rows["agent_id"])
                    progress.update(len(rows["agent_id"]))
                states.finish()
                if layout["has_agents"]:
                    con.executemany(f"INSERT INTO {AGENTS} VALUES (?, ?)", agents.items())
                con.commit()

        _write(target, write, progress, overwrite)
    stats["seconds"] = time.perf_counter() - start
    return stats


def _collect_agents(agents: dict[Any, Any], rows: dict[str, list[Any]], layout: dict) -> None:
    types = rows.get(f"{AGENTS}.agent_type")
    if isinstance(types, pa.Array):
        types = types.to_pylist()
    for i, agent in enumerate(rows["agent_id"]):
        if agent not in agents:
            agents[agent] = types[i] if types is not None else None


# ---------------------------------------------------------------------- verify
def verify(
    src: str, data_path: str, ckpt_path: str | None = None, trusted: Any = ()
) -> dict[str, Any]:
    """Decode ``src`` and compare it with ``data_path`` row by row: keys and other columns
    exact, NULLs kept, continuous features within tolerance, the rest exact. The source is read
    on its own (``agent_states`` alone, agent features looked up in ``agents``), not through
    the codec's reader. Raises VerifyError naming the first difference."""
    path = check_input(src, "in")
    with open(path, "rb") as fh, closing(connect(data_path)) as con:
        reader = Reader(fh, str(src))
        module = _open_model(reader, ckpt_path, trusted)
        schema = module.schema
        layout = Layout(**{k: reader.header["layout"][k] for k in Layout.__dataclass_fields__})
        columns = table_columns(con, STATES)
        if columns != layout.columns:
            raise VerifyError(f"{data_path} has other columns than {src} was coded from")
        lookup = _agent_lookup(con, data_path, layout.agent_features)
        worst = {f.name: 0.0 for f in schema.of_kind("continuous")}
        states = 0
        source = read_states(con, layout.columns, int(reader.header["chunk_size"]))
        with closing(source), deterministic_threads():  # closed before the db
            for decoded in decoded_chunks(reader, module):
                original = next(source, None)
                if original is None or len(original["agent_id"]) != len(decoded["agent_id"]):
                    raise VerifyError(f"{src} and {data_path} hold different numbers of states")
                for name, values in lookup.items():
                    original[name] = [values.get(a) for a in original["agent_id"]]
                _compare(schema, layout, original, decoded, worst, states)
                states += len(decoded["agent_id"])
            if next(source, None) is not None:
                raise VerifyError(f"{data_path} has more states than {src}")
    return {"states": states, "max_error_in_tolerances": worst}


def _agent_lookup(
    con: sqlite3.Connection, path: str, features: list[str]
) -> dict[str, dict[Any, Any]]:
    """Per agent feature, agent_id -> value from ``agents`` (VerifyError if it lists an agent
    twice: a restored database has one row per agent)."""
    if not features:
        return {}
    cols = ", ".join(quote(c) for c in features)
    lookup: dict[str, dict[Any, Any]] = {c: {} for c in features}
    for agent, *values in con.execute(f"SELECT agent_id, {cols} FROM {AGENTS}"):
        if agent in lookup[features[0]]:
            raise VerifyError(f"{path}: table {AGENTS!r} lists agent {str(agent)[:80]!r} twice")
        for c, v in zip(features, values, strict=True):
            lookup[c][agent] = v
    return lookup


class VerifyError(ValueError):
    """A decoded file differs from the database beyond what the codec guarantees."""

    prefix = "verify failed: "  # how the command line reports it


#: a value exactly on a cell edge decodes one tolerance away; float32 noise may add 1e-4 of it,
#: the margin the drift metric allows too (metrics.py)
TOLERANCE_SLACK = 1.0 + 1e-4


def _compare(schema, layout, original, decoded, worst, offset) -> None:
    for c in [*layout.keys, *layout.others]:
        if original[c] != decoded[c]:
            row = next(
                i for i, (a, b) in enumerate(zip(original[c], decoded[c], strict=True)) if a != b
            )
            raise VerifyError(f"column {c!r} differs at state {offset + row + 1}")
    for f in schema.features:
        name = f"{AGENTS}.{f.name}" if f.name in layout.agent_features else f.name
        a, b = original[f.name], decoded[name]
        nulls = [x is None for x in a] != [y is None for y in b]
        if nulls:
            raise VerifyError(f"feature {f.name!r}: NULLs differ")
        if f.kind == "continuous":
            x = np.array([np.nan if v is None else v for v in a], dtype=np.float64)
            y = np.array([np.nan if v is None else v for v in b], dtype=np.float64)
            err = np.nan_to_num(np.abs(x - y)) / f.tolerance
            worst[f.name] = max(worst[f.name], float(err.max(initial=0.0)))
            if (err > TOLERANCE_SLACK).any():
                row = int(np.argmax(err > TOLERANCE_SLACK))
                raise VerifyError(
                    f"feature {f.name!r} is {err[row]:.3g} tolerances off at state "
                    f"{offset + row + 1}"
                )
        elif [None if v is None else str(int(v)) if f.kind == "binary" else str(v) for v in a] != [
            None if v is None else str(v) for v in b
        ]:
            raise VerifyError(f"feature {f.name!r} differs")
