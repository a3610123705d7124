"""Crafting the hostile files of benchmarks/hostile_files.py, run as a script in the environment
of the code version under test: ``python _hostile_craft.py TASKS.json`` with ``PYTHONPATH`` =
that version's ``src`` and this repo's ``tests`` (for the crafting helpers the tests use).

Each task is ``[name, case_dir, base_dir]``: ``name`` is one of the functions in ``TASKS``,
``case_dir`` the fresh folder of one case (its marker ``pwned`` and ``victim.txt`` live there),
``base_dir`` that version's trained ``good.ckpt`` and compressed ``good.mtc``.

A ``.mtc`` is crafted in the format of the version that will read it: this tree's format through
``tests/mtc_craft.py``; the format of an older tree (where ``mtc_craft`` cannot be imported)
through that tree's own ``Reader`` and ``Writer``, changed the same way. Checkpoints are crafted
(``mtc_craft.evil_checkpoint``) in this tree's environment only: they are the same for both.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

try:
    import mtc_craft as _fmt

    OLD_FORMAT = False
except ImportError:  # an older tree: its container lacks what mtc_craft imports
    _fmt = None
    OLD_FORMAT = True

BOMB_MIB = 960  # 0.94 MiB of zlib that inflate to 960 MiB (the size the tests use)


# ---------------------------------------------------------------- the old format (before tree)
def _old_parts(path: Path) -> tuple[dict, bytes, list]:
    from meaning_transform.codec.container import Reader

    with open(path, "rb") as fh:
        reader = Reader(fh, str(path))
        return reader.header, reader.model, list(reader.chunks())


def _old_assemble(path: Path, header: Any, model: bytes, chunks: list) -> Path:
    from meaning_transform.codec.container import Writer

    buf = io.BytesIO()
    writer = Writer(buf, header, model)
    for chunk in chunks:
        with suppress(ValueError):  # a crafted row count that is no integer: counted as 0
            writer.chunk(chunk)
    writer.close()
    path.write_bytes(buf.getvalue())
    return path


def _rewrite(
    src: Path,
    dst: Path,
    header: Callable[[dict], Any] | None = None,
    chunk: Callable[[Any], Any] | None = None,
    model: bytes | None = None,
) -> Path:
    """``src`` with its header and/or each agent_states chunk changed, in the reader's format."""
    if not OLD_FORMAT:
        return _fmt.rewrite(src, dst, header=header, chunk=chunk, model=model)
    h, m, chunks = _old_parts(src)
    if header is not None:
        header(h)
    for c in chunks if chunk is not None else ():
        chunk(c)
    return _old_assemble(dst, h, m if model is None else model, chunks)


def _raw(path: Path, head: bytes, after_header: bytes) -> Path:
    if not OLD_FORMAT:
        return _fmt.raw(path, head, after_header)
    from meaning_transform.codec.container import MAGIC, VERSION

    path.write_bytes(
        MAGIC + struct.pack("<HII", VERSION, len(head), zlib.crc32(head)) + head + after_header
    )
    return path


def _name_checkpoint(ckpt_file: Path) -> tuple[Callable[[dict], Any], bytes]:
    """(header change, model bytes) of a file that names ``ckpt_file`` instead of embedding a
    model: this format's way (format 4: the checkpoint's hash, which a crafter can compute)."""
    if OLD_FORMAT:
        return (lambda h: h["model"].update(ckpt_path=str(ckpt_file), embedded=False)), b""
    import torch

    digest = _fmt.sha(torch.load(ckpt_file, map_location="cpu", weights_only=True))
    named = {"sha256": digest, "path": str(ckpt_file)}
    return (lambda h: h["model"].update(source="checkpoint", checkpoint=named)), b""


# ---------------------------------------------------------------- checkpoints (either tree)
def tiny_db(case: Path, base: Path) -> None:
    """``sim.db``: 1,500 synthetic states of 25 agents, 4 NULLs in a coded feature (as the
    tests' ``tiny`` fixture)."""
    from agentfarm_db import write_agentfarm_db

    write_agentfarm_db(case / "sim.db", 1500, num_agents=25, nulls={"resource_level": 4})


def evil_ckpt(case: Path, base: Path) -> None:
    """``loss.terms.pwn`` names ``pathlib.Path.write_text(Path(<marker>), "x")`` (the Path
    built by instantiate too: any file, any content)."""
    marker = {"_target_": "pathlib.Path", "_args_": [str(case / "pwned")]}
    pwn = {"_target_": "pathlib.Path.write_text", "_args_": [marker, "x"]}
    _fmt.evil_checkpoint(
        base / "good.ckpt",
        case / "evil.ckpt",
        lambda c: c["hyper_parameters"]["loss"]["terms"].__setitem__("pwn", pwn),
    )


def evil_run_data_ckpt(case: Path, base: Path) -> None:
    """``run_config.data.num_states`` names ``shutil.copyfile(victim.txt, <marker>)`` (built
    before the data module it is an argument of)."""
    copy = {
        "_target_": "shutil.copyfile",
        "src": str(case / "victim.txt"),
        "dst": str(case / "pwned"),
    }
    _fmt.evil_checkpoint(
        base / "good.ckpt",
        case / "evil.ckpt",
        lambda c: c["run_config"]["data"].__setitem__("num_states", copy),
    )


def wide_ckpt(case: Path, base: Path) -> None:
    """``model.hidden_dims=[24576, 24576]`` (a few KB in the file, ~5 GB once built)."""
    _fmt.evil_checkpoint(
        base / "good.ckpt",
        case / "wide.ckpt",
        lambda c: c["hyper_parameters"]["model"].__setitem__("hidden_dims", [24576, 24576]),
    )


def bomb(case: Path, base: Path) -> None:
    """``bomb.zlib``: the zlib bomb both formats' crafts put in a header or a block."""
    (case / "bomb.zlib").write_bytes(_fmt.zlib_bomb(BOMB_MIB))


def _db_variant(*sql: str) -> Callable[[Path, Path], None]:
    def make(case: Path, base: Path) -> None:
        from test_safety import _db_variant as variant

        variant(case / "sim.db", case / "odd.db", *sql)

    return make


def dup_agents_db(case: Path, base: Path) -> None:
    """``dup.db``: the agents table lists one agent twice (its primary key dropped)."""
    from test_safety import _dup_agents_db

    _dup_agents_db(case / "sim.db", case / "dup.db")


def secret_db(case: Path, base: Path) -> None:
    """``token.db``: not SQLite, and what it holds must not be echoed."""
    (case / "token.db").write_bytes(b"SECRET-TOKEN-42 and more private bytes")


# ---------------------------------------------------------------- .mtc files (the reader's format)
def mtc_embedded_evil(case: Path, base: Path) -> None:
    """The embedded model is ``evil.ckpt`` (hyperparameters naming a callable)."""
    _rewrite(base / "good.mtc", case / "x.mtc", model=(case / "evil.ckpt").read_bytes())


def mtc_named_evil(case: Path, base: Path) -> None:
    """Not embedded: the header names ``evil.ckpt`` (with its hash, where the format has one)."""
    change, model = _name_checkpoint(case / "evil.ckpt")
    _rewrite(base / "good.mtc", case / "x.mtc", header=change, model=model)


def mtc_wide(case: Path, base: Path) -> None:
    """A model of 24576-wide layers: embedded in the old format (its hyperparameters are the
    file's), named by hash in format 4 (an embedded model there is integer weights only)."""
    if OLD_FORMAT:
        _rewrite(base / "good.mtc", case / "x.mtc", model=(case / "wide.ckpt").read_bytes())
    else:
        change, model = _name_checkpoint(case / "wide.ckpt")
        _rewrite(base / "good.mtc", case / "x.mtc", header=change, model=model)


def mtc_sql(case: Path, base: Path) -> None:
    """agent_states' CREATE statement replaced by ``VACUUM INTO '<marker>'``."""
    sql = f"VACUUM INTO '{case / 'pwned'}'"

    def change(h: dict) -> None:
        if OLD_FORMAT:
            h["layout"]["states_sql"] = sql
            return
        for o in h["objects"]:
            if o["name"] == "agent_states":
                o["sql"] = sql

    _rewrite(base / "good.mtc", case / "x.mtc", header=change)


def mtc_header_bomb(case: Path, base: Path) -> None:
    _raw(case / "x.mtc", (case / "bomb.zlib").read_bytes(), b"")


def mtc_columns_bomb(case: Path, base: Path) -> None:
    """A chunk's key columns are a bomb: 960 MiB of zlib (the old format's columns are zlib);
    format 4's blocks declare each stream's raw length and bound it by the block's size, so
    there the worst a 1 MB block can be: 250 MiB of zeros as one zstd stream, padded."""
    if OLD_FORMAT:
        columns = (case / "bomb.zlib").read_bytes()
    else:
        from meaning_transform.codec import backend

        backend.compress.__defaults__ = ((backend.ZSTD,),)  # crafting only: xz takes 20 s here
        columns = backend.pack([bytes(250 << 20)])
    _rewrite(base / "good.mtc", case / "x.mtc", chunk=lambda c: setattr(c, "columns", columns))


def _claim_rows(rows: int) -> Callable[[dict], Any] | None:
    """Format 4's header states how many states the file holds (checked against the trailer):
    a crafter who changes a chunk's row count changes it too."""
    return None if OLD_FORMAT else (lambda h: h["states"].update(rows=rows))


def mtc_many_rows(case: Path, base: Path) -> None:
    """The (one) chunk claims 3e8 states."""
    _rewrite(
        base / "good.mtc",
        case / "x.mtc",
        header=_claim_rows(300_000_000),
        chunk=lambda c: c.meta.update(n=300_000_000),
    )


def _model_length(length: int) -> Callable[[Path, Path], None]:
    """The file up to its header, then an embedded model that claims ``length`` bytes."""

    def make(case: Path, base: Path) -> None:
        from meaning_transform.codec.container import MAGIC

        data = (base / "good.mtc").read_bytes()
        (n,) = struct.unpack_from("<I", data, len(MAGIC) + 2)
        prefix = data[: len(MAGIC) + 10 + n]
        (case / "x.mtc").write_bytes(prefix + struct.pack("<QI", length, 0) + b"\0" * 64)

    return make


def mtc_header_list(case: Path, base: Path) -> None:
    _raw(case / "x.mtc", zlib.compress(b"[1, 2]"), b"")


def mtc_missing_key(case: Path, base: Path) -> None:
    """The header lacks the description of agent_states (``layout``; format 4: ``states``)."""
    key = "layout" if OLD_FORMAT else "states"
    _rewrite(base / "good.mtc", case / "x.mtc", header=lambda h: h.pop(key))


def mtc_chunk_size(case: Path, base: Path) -> None:
    _rewrite(base / "good.mtc", case / "x.mtc", header=lambda h: h.update(chunk_size="many"))


def mtc_n_text(case: Path, base: Path) -> None:
    """A chunk's row count is text (the trailer, and format 4's header, count it as 0)."""
    change = _claim_rows(0)
    _rewrite(
        base / "good.mtc", case / "x.mtc", header=change, chunk=lambda c: c.meta.update(n="abc")
    )


def mtc_columns_not_zlib(case: Path, base: Path) -> None:
    _rewrite(base / "good.mtc", case / "x.mtc", chunk=lambda c: setattr(c, "columns", b"not zlib"))


def mtc_far_symbols(case: Path, base: Path) -> None:
    """The first chunk re-coded (every CRC right) with positions 100,000 cells away from any
    the writer saw, through the reader's own coder."""
    import numpy as np

    feature = "position_x"
    if OLD_FORMAT:
        from meaning_transform.codec import chunks as old
        from meaning_transform.codec import columns, commands, model

        module = model.load_model(base / "good.ckpt")
        header, blob, sections = _old_parts(base / "good.mtc")
        c = sections[0]
        flag = commands._same_agent(columns.decode_columns(c.columns, c.meta["n"])[0]["agent_id"])
        with old.deterministic_threads():
            symbols = old.decode_chunk(module, c.z_words, c.x_words, flag)
            symbols[:, [f.name for f in module.schema.features].index(feature)] += 100_000
            coded = old.encode_chunk(module, symbols, flag)
        c.z_words, c.x_words = coded.z_words, coded.x_words
        c.meta["symbols_crc"] = coded.symbols_crc
        _old_assemble(case / "x.mtc", header, blob, sections)
        return
    import sqlite3
    from contextlib import closing

    from meaning_transform.codec.chunks import decode_chunk, encode_chunk, symbols_crc
    from meaning_transform.codec.container import Chunk
    from meaning_transform.codec.state_keys import decode_state_keys
    from meaning_transform.codec.states import read_known, same_agent
    from meaning_transform.models.integer_export import export, export_encoder
    from meaning_transform.module import MeaningModule

    module = MeaningModule.load_from_checkpoint(base / "good.ckpt")
    integer = export(module.codec, module.bottleneck)
    header, model, sections = _fmt.parts(base / "good.mtc")
    with closing(sqlite3.connect(case / "sim.db")) as con:
        known = read_known(con)
    i = next(i for i, s in enumerate(sections) if isinstance(s, Chunk))
    c = sections[i]
    flag = same_agent(decode_state_keys(c.columns, c.meta["n"], known)[0]["agent_id"])
    symbols = decode_chunk(integer, c.z_words, c.x_words, flag)
    symbols[:, [f.name for f in module.schema.features].index(feature)] += 100_000
    offsets = export_encoder(module.codec, module.bottleneck).offsets(symbols, flag)
    coded = encode_chunk(integer, symbols, flag, offsets)
    meta = dict(c.meta, symbols_crc=symbols_crc(np.asarray(symbols)))
    sections[i] = Chunk(meta, coded.z_words, coded.x_words, c.columns)
    _fmt.assemble(case / "x.mtc", header, model, sections)


#: what each case may ask for; checkpoints, databases and blobs are crafted by this tree only
COMMON: dict[str, Callable[[Path, Path], None]] = {
    "tiny_db": tiny_db,
    "evil_ckpt": evil_ckpt,
    "evil_run_data_ckpt": evil_run_data_ckpt,
    "wide_ckpt": wide_ckpt,
    "bomb": bomb,
    "view_db": _db_variant(
        "ALTER TABLE agent_states RENAME TO s", "CREATE VIEW agent_states AS SELECT * FROM s"
    ),
    "lots_db": _db_variant("UPDATE agent_states SET resource_level = 'lots' WHERE rowid = 9"),
    "far_db": _db_variant("UPDATE agent_states SET total_reward = 1e15 WHERE rowid = 9"),
    "quote_db": _db_variant(
        'ALTER TABLE agent_states ADD COLUMN "x"")); DROP TABLE agents; --" TEXT'
    ),
    "dup_agents_db": dup_agents_db,
    "secret_db": secret_db,
}
FORMAT: dict[str, Callable[[Path, Path], None]] = {
    "mtc_embedded_evil": mtc_embedded_evil,
    "mtc_named_evil": mtc_named_evil,
    "mtc_wide": mtc_wide,
    "mtc_sql": mtc_sql,
    "mtc_header_bomb": mtc_header_bomb,
    "mtc_columns_bomb": mtc_columns_bomb,
    "mtc_many_rows": mtc_many_rows,
    "mtc_len40": _model_length(2**40),
    "mtc_lenmax": _model_length(2**64 - 1),
    "mtc_header_list": mtc_header_list,
    "mtc_missing_key": mtc_missing_key,
    "mtc_chunk_size": mtc_chunk_size,
    "mtc_n_text": mtc_n_text,
    "mtc_columns_not_zlib": mtc_columns_not_zlib,
    "mtc_far_symbols": mtc_far_symbols,
}
TASKS = {**COMMON, **FORMAT}


def main(tasks_file: str) -> int:
    """Run each task; a task that fails is reported (stderr) and the others still run."""
    failed = {}
    for name, case, base in json.loads(Path(tasks_file).read_text()):
        try:
            TASKS[name](Path(case), Path(base))
        except Exception as e:  # noqa: BLE001 - the case is then marked as not crafted
            failed[case] = f"{name}: {type(e).__name__}: {e}"
            (Path(case) / "x.mtc").unlink(missing_ok=True)
    print(json.dumps(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
