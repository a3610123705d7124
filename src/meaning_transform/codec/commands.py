"""compress / decompress / verify: a simulation.db <-> a .mtc file, chunk by chunk.

Memory stays flat in the database size: states are read, coded and written one chunk
(``chunk_size`` states) at a time. Outputs are written to a temp file beside the target and
renamed when complete (``io.atomic_write``), so a failure leaves nothing behind.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from meaning_transform.codec.chunks import (
    decode_chunk,
    encode_chunk,
    in_order,
    symbols_crc,
    workers_for,
)
from meaning_transform.codec.columns import decode_columns, encode_columns
from meaning_transform.codec.container import Chunk, CodecFileError, Reader, Writer
from meaning_transform.codec.model import load_model
from meaning_transform.codec.source import (
    AGENTS,
    SlowPath,
    StatesWriter,
    connect,
    count_states,
    create_output,
    feature_table,
    layout_of,
    read_arrays,
    read_chunks,
)
from meaning_transform.errors import CheckpointError, ConfigError, DataError
from meaning_transform.grid import MeaningGrid
from meaning_transform.io import atomic_write
from meaning_transform.models.integer_export import export, export_encoder
from meaning_transform.models.integer_model import IntegerEncoder, IntegerModel
from meaning_transform.schema import FeatureSchema
from meaning_transform.schema.table import encode

NULL_PREFIX = "null:"  # other-column name of a coded feature's NULL mask


# ---------------------------------------------------------------------- arguments
def check_output(out: str | None, overwrite: bool, what: str = "out") -> Path:
    """The output path, or a ConfigError if it is missing, a folder, exists or has no folder."""
    if not out:
        raise ConfigError(f"{what}= is required: the file to write")
    path = Path(out).expanduser()
    if path.is_dir():
        raise ConfigError(f"{what}={out!r} is a directory; give a file path")
    if path.exists() and not overwrite:
        raise ConfigError(f"{what}={out!r} exists; remove it or pass overwrite=true")
    if not path.parent.is_dir():
        raise ConfigError(f"{what}={out!r}: folder {str(path.parent)!r} does not exist")
    return path


def check_input(path: str | None, what: str) -> Path:
    """An existing input file, or a one-line error."""
    if not path:
        raise ConfigError(f"{what}= is required")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{what}={path!r}: file not found")
    return p


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


def _write(target: Path, write: Any, progress: Progress) -> None:
    """``write(tmp)`` then rename onto ``target`` (nothing is left on failure); end the bar."""
    try:
        atomic_write(target, write)
    finally:
        progress.close()


# ---------------------------------------------------------------------- compress
def compress(
    ckpt_path: str,
    data_path: str,
    out: str,
    chunk_size: int = 131072,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Code ``data_path``'s agent_states (and agent types) into ``out``; returns statistics.

    The file carries the checkpoint's integer coding model (``integer_export.export``), which
    is what decodes it on any machine; its integer encoder computes the latents."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    target = check_output(out, overwrite)
    if not ckpt_path:
        raise ConfigError("ckpt_path= is required: a checkpoint trained with compression=lossless")
    module = load_model(ckpt_path)
    model = export(module.codec, module.bottleneck)
    encoder = export_encoder(module.codec, module.bottleneck)
    schema = module.schema
    start = time.perf_counter()
    stats: dict[str, Any] = {"states": 0, "estimated_bits": 0.0, "model_bytes": 0}
    with closing(connect(data_path)) as con:
        layout = layout_of(con, data_path, schema)
        total = count_states(con)
        if total == 0:
            raise DataError(f"{data_path}: agent_states has no rows")
        header = {
            "model": {"sha256": model.sha256, "ckpt_path": str(Path(ckpt_path).resolve())},
            "schema": schema.to_dict(),
            "context": module.context,
            "layout": layout.to_dict(),
            "chunk_size": chunk_size,
            "source": {"path": str(Path(data_path).resolve()), "states": total},
        }
        blob = model.to_bytes()
        stats["model_bytes"] = len(blob)
        progress = Progress("compress", total)

        def write_from(tmp: str, source: Iterator[dict[str, Any]]) -> None:
            stats["states"], stats["estimated_bits"], progress.done = 0, 0.0, 0
            with open(tmp, "wb") as fh, closing(source):
                writer = Writer(fh, header, blob)
                for chunk, estimated in in_order(
                    lambda rows: _encode(module.codec.grid, model, encoder, layout, rows),
                    source,
                    workers_for(model),
                ):
                    writer.chunk(chunk)
                    stats["states"] += chunk.meta["n"]
                    stats["estimated_bits"] += estimated
                    progress.update(chunk.meta["n"])
                writer.close()

        def write(tmp: str) -> None:
            try:  # Arrow columns; the sqlite3 rows when a column's values need it
                write_from(tmp, read_arrays(con, data_path, layout, schema, chunk_size))
            except SlowPath:
                write_from(tmp, read_chunks(con, layout, chunk_size))

        _write(target, write, progress)
    stats["seconds"] = time.perf_counter() - start
    stats["bytes"] = target.stat().st_size
    return stats


def _encode(
    grid: MeaningGrid,
    model: IntegerModel,
    encoder: IntegerEncoder,
    layout: Any,
    rows: dict[str, list[Any]],
) -> tuple[Chunk, float]:
    """One chunk of database rows -> (Chunk, the model's estimated bits for it)."""
    schema = grid.schema
    table, nulls = feature_table(schema, rows)
    symbols = grid.encode(encode(schema, table))
    agents = rows["agent_id"]
    flag = _same_agent(agents)
    coded = encode_chunk(model, symbols, flag, encoder.offsets(symbols, flag))
    others = {c: rows[c] for c in layout.others}
    for name, mask in nulls.items():
        others[NULL_PREFIX + name] = mask.astype(int).tolist()
    columns = encode_columns({k: rows[k] for k in layout.keys}, others)
    meta = {"n": len(agents), "symbols_crc": coded.symbols_crc, "estimated": coded.estimated_bits}
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
@dataclass(frozen=True)
class FileModel:
    """What decodes a file: its integer coding model, and the schema and grid of its header."""

    model: IntegerModel
    schema: FeatureSchema
    grid: MeaningGrid


def _open_model(reader: Reader) -> FileModel:
    """The file's integer coding model (hash-checked against the header) and its grid."""
    recorded = reader.header["model"]
    model = IntegerModel.from_bytes(reader.model)
    if model.sha256 != recorded["sha256"]:
        raise CheckpointError(
            f"{reader.name} carries another model (SHA-256 {model.sha256[:12]}...) than its "
            f"header names ({recorded['sha256'][:12]}...): the file is corrupted"
        )
    schema = FeatureSchema.from_config(reader.header["schema"])
    if len(schema.features) != model.num_features:
        raise CodecFileError(f"{reader.name}: its model and its schema differ in features")
    return FileModel(model, schema, MeaningGrid(schema, 1))


def decoded_chunks(
    reader: Reader, file_model: FileModel, arrow: bool = False
) -> Iterator[dict[str, list[Any]]]:
    """Each chunk as database columns (keys, features, others) plus ``agents.<feature>``;
    with ``arrow``, features as Arrow arrays (NULLs masked) instead of lists."""

    def decode(numbered: tuple[int, Chunk]) -> dict[str, list[Any]]:
        return _decoded(reader, file_model, *numbered, arrow)

    workers = workers_for(file_model.model)
    yield from in_order(decode, enumerate(reader.chunks(), start=1), workers)


def _decoded(
    reader: Reader, file_model: FileModel, i: int, chunk: Chunk, arrow: bool
) -> dict[str, list[Any]]:
    """Chunk ``i`` as ``decoded_chunks`` gives it."""
    schema = file_model.schema
    layout = reader.header["layout"]
    n = int(chunk.meta["n"])
    where = f"{reader.name}: chunk {i}"
    try:
        keys, others = decode_columns(chunk.columns, n)
        flag = _same_agent(keys["agent_id"])
        symbols = decode_chunk(file_model.model, chunk.z_words, chunk.x_words, flag)
    except (ValueError, KeyError, IndexError) as e:
        raise CodecFileError(f"{where} does not decode ({e})") from None
    if symbols_crc(symbols) != chunk.meta["symbols_crc"]:
        raise CodecFileError(
            f"{where} decodes to other states than were coded (checksum mismatch): the file is "
            "corrupted"
        )
    native = file_model.grid.native(symbols)
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


def decompress(src: str, out: str, overwrite: bool = False) -> dict[str, Any]:
    """Restore ``src`` (.mtc) into a new SQLite database ``out`` with nothing but the file;
    returns statistics."""
    path = check_input(src, "in")
    target = check_output(out, overwrite)
    stats: dict[str, Any] = {"states": 0}
    with open(path, "rb") as fh:
        reader = Reader(fh, str(src))
        file_model = _open_model(reader)
        start = time.perf_counter()  # coding speed: after the model is loaded
        layout = reader.header["layout"]
        progress = Progress("decompress", reader.num_states)

        def write(tmp: str) -> None:
            agents: dict[Any, Any] = {}
            with (
                closing(create_output(tmp, layout)) as con,
                closing(StatesWriter(con, tmp, layout["columns"])) as states,
            ):
                for rows in decoded_chunks(reader, file_model, arrow=True):
                    states.append(rows)
                    _collect_agents(agents, rows, layout)
                    stats["states"] += len(rows["agent_id"])
                    progress.update(len(rows["agent_id"]))
                states.finish()
                if layout["has_agents"]:
                    con.executemany(f"INSERT INTO {AGENTS} VALUES (?, ?)", agents.items())
                con.commit()

        _write(target, write, progress)
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
def verify(src: str, data_path: str) -> dict[str, Any]:
    """Decode ``src`` and compare it with ``data_path`` row by row: keys and other columns
    exact, NULLs kept, continuous features within tolerance, the rest exact. Raises
    VerifyError naming the first difference."""
    path = check_input(src, "in")
    with open(path, "rb") as fh, closing(connect(data_path)) as con:
        reader = Reader(fh, str(src))
        file_model = _open_model(reader)
        schema = file_model.schema
        layout = layout_of(con, data_path, schema)
        if layout.to_dict() != reader.header["layout"]:
            raise VerifyError(f"{data_path} has other columns than {src} was coded from")
        worst = {f.name: 0.0 for f in schema.of_kind("continuous")}
        states = 0
        chunks = read_chunks(con, layout, int(reader.header["chunk_size"]))
        with closing(chunks) as source:  # closed before the db
            for decoded in decoded_chunks(reader, file_model):
                original = next(source, None)
                if original is None or len(original["agent_id"]) != len(decoded["agent_id"]):
                    raise VerifyError(f"{src} and {data_path} hold different numbers of states")
                _compare(schema, layout, original, decoded, worst, states)
                states += len(decoded["agent_id"])
            if next(source, None) is not None:
                raise VerifyError(f"{data_path} has more states than {src}")
    return {"states": states, "max_error_in_tolerances": worst}


class VerifyError(ValueError):
    """A decoded file differs from the database beyond what the codec guarantees."""


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
