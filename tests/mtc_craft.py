"""Crafting .mtc files and checkpoints as a hostile sender would (tests only): take a valid file
apart, change what an attacker controls, and put it back with every CRC and length right, so
that what is tested is the reader's checks of the content, not only its checksums."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meaning_transform.codec.container import (
    CHUNK,
    MAGIC,
    TABLE_BLOCK,
    VERSION,
    Chunk,
    Reader,
    Writer,
)
from meaning_transform.codec.model import checkpoint_hash


def parts(path: Path) -> tuple[dict[str, Any], bytes, list[Any]]:
    """(header, embedded model bytes, sections) of a valid file: each section a Chunk of
    agent_states or a (table, block bytes) pair."""
    with open(path, "rb") as fh:
        reader = Reader(fh, str(path))
        return reader.header, reader.model, [item for _, item, _ in reader.sections()]


def assemble(path: Path, header: dict[str, Any], model: bytes, sections: list[Any]) -> Path:
    """Write a file with correct framing, CRCs and trailer from (possibly crafted) parts."""
    buf = io.BytesIO()
    writer = Writer(buf, header, model)
    for section in sections:  # as Writer does, counting a crafted non-integer row count as 0
        if isinstance(section, Chunk):
            tag, payload = CHUNK, section.payload()
            n = section.meta.get("n")
            writer.states += n if isinstance(n, int) and 0 <= n < 2**63 else 0
        else:
            tag, payload = TABLE_BLOCK, struct.pack("<H", writer.tables[section[0]]) + section[1]
        writer.crcs.append(zlib.crc32(payload))
        buf.write(tag + struct.pack("<II", len(payload), writer.crcs[-1]) + payload)
    writer.close()
    path.write_bytes(buf.getvalue())
    return path


def rewrite(
    src: Path,
    dst: Path,
    header: Callable[[dict], Any] | None = None,
    chunk: Callable[[Chunk], Any] | None = None,
    model: bytes | None = None,
) -> Path:
    """``src`` with its header and/or each agent_states chunk changed in place."""
    h, m, sections = parts(src)
    if header is not None:
        header(h)
    if chunk is not None:
        for c in sections:
            if isinstance(c, Chunk):
                chunk(c)
    return assemble(dst, h, m if model is None else model, sections)


def raw(path: Path, head: bytes, after_header: bytes) -> Path:
    """A file whose compressed header is ``head`` (CRC right) followed by ``after_header``."""
    path.write_bytes(
        MAGIC + struct.pack("<HII", VERSION, len(head), zlib.crc32(head)) + head + after_header
    )
    return path


def zlib_bomb(inflated_mib: int) -> bytes:
    """zlib of ``inflated_mib`` MiB of zeros (about 1 KiB per MiB), built a MiB at a time."""
    c = zlib.compressobj(9)
    zeros = b"\0" * (1 << 20)
    return b"".join([*(c.compress(zeros) for _ in range(inflated_mib)), c.flush()])


def evil_checkpoint(good: str | Path, dst: Path, change: Callable[[dict], Any]) -> Path:
    """A copy of checkpoint ``good`` with ``change(ckpt)`` applied (plain data only: what a
    weights-only load lets through)."""
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    change(ckpt)
    torch.save(ckpt, dst)
    return dst


def sha(ckpt: dict[str, Any]) -> str:
    """The checkpoint hash a header must carry for ``ckpt`` to be accepted."""
    return checkpoint_hash(ckpt, "crafted")


def words(a: Any) -> np.ndarray:
    """Stream words as the container stores them."""
    return np.asarray(a, dtype=np.uint32)
