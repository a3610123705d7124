"""The ``.mtc`` file format: a header, an optional embedded model, sections, a trailer.

::

    magic  b"MTCODEC\\0"  | version u16 | header length u32 | header CRC-32 u32 | header (zlib JSON)
    model  length u64 | CRC-32 u32 | bytes (the integer coding model; length 0 when not embedded)
    section* tag (4 bytes) | payload length u32 | payload CRC-32 u32 | payload
             b"TBLK": a block of a table's rows: table number u16 | ``tables.encode_block``
             b"CHNK": a chunk of agent_states: meta length u32 | meta (JSON: rows, stream
                      lengths, symbol CRC, the model's estimate, each feature's symbol range) |
                      latent words | symbol words | keys and other columns (``state_keys``)
    end    b"MTCEND\\0\\0" | sections u32 | states u64 | CRC-32 of the section CRCs u32

All integers little-endian. The header lists the database's schema objects (their SQL), its
settings, the tables whose blocks follow (in restore order), the agent_states layout and the
model (embedded, or packaged with the library, by SHA-256).

A file is hostile input until read: every length is checked against the bytes that remain and
the format's limits before anything is allocated, compressed parts inflate to bounded sizes,
every header and meta field is type- and range-checked (``check_header``, ``check_meta``), and
every section's frame and CRC is checked before anything decodes. Any mismatch is a
``CodecFileError``, so a truncated, corrupted or crafted file never decodes into a database.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from meaning_transform.codec.bounded import CodecFileError, field, inflate, int_in, names

MAGIC = b"MTCODEC\0"
VERSION = 4  # 2: chunks declare each feature's symbol range; 3: integer coding model
CHUNK = b"CHNK"
TABLE_BLOCK = b"TBLK"
TAGS = (CHUNK, TABLE_BLOCK)
END = b"MTCEND\0\0"
_END_SIZE = len(END) + 4 + 8 + 4
#: format limits: a header of at most 1 MiB (8 MiB inflated); chunks of at most MAX_CHUNK states
MAX_HEADER = 1 << 20
MAX_HEADER_INFLATED = 8 << 20
MAX_CHUNK = 1 << 18
MAX_META = 1 << 16
_SHA256 = re.compile(r"[0-9a-f]{64}")
CONTEXTS = (None, "previous", "history")
MODEL_SOURCES = ("embedded", "packaged", "checkpoint", "adaptive")
ROW_ORDERS = ("step_agent", "rowid", "none")
MAX_TABLES = 1 << 12

__all__ = ["CodecFileError", "Chunk", "Reader", "Writer", "check_header"]


@dataclass
class Chunk:
    """One chunk's parts."""

    meta: dict[str, Any]
    z_words: np.ndarray
    x_words: np.ndarray
    columns: bytes

    def payload(self) -> bytes:
        """Serialized payload (lengths recorded in meta)."""
        meta = dict(self.meta, z_len=len(self.z_words), x_len=len(self.x_words))
        meta["columns_len"] = len(self.columns)
        head = json.dumps(meta).encode()
        return b"".join(
            [
                struct.pack("<I", len(head)),
                head,
                self.z_words.astype("<u4").tobytes(),
                self.x_words.astype("<u4").tobytes(),
                self.columns,
            ]
        )

    @classmethod
    def parse(cls, payload: bytes, where: str, header: dict[str, Any]) -> Chunk:
        """Inverse of ``payload``, every field checked against ``header`` and the bytes."""
        if len(payload) < 4:
            raise CodecFileError(f"{where}: chunk is too short")
        (n,) = struct.unpack_from("<I", payload)
        if n > min(MAX_META, len(payload) - 4):
            raise CodecFileError(f"{where}: chunk meta length {n} is past the chunk")
        try:
            meta = json.loads(payload[4 : 4 + n])
        except (ValueError, RecursionError) as e:
            raise CodecFileError(f"{where}: chunk meta cannot be read ({e})") from None
        check_meta(meta, where, header, len(payload) - 4 - n)
        off = 4 + n
        z = np.frombuffer(payload, "<u4", meta["z_len"], off)
        off += 4 * meta["z_len"]
        x = np.frombuffer(payload, "<u4", meta["x_len"], off)
        off += 4 * meta["x_len"]
        columns = payload[off:]
        return cls(meta, z.astype(np.uint32), x.astype(np.uint32), columns)


def check_meta(meta: Any, where: str, header: dict[str, Any], body: int) -> None:
    """CodecFileError unless chunk ``meta`` is well-formed for ``header`` and ``body`` bytes."""
    where = f"{where} meta"
    if not isinstance(meta, dict):
        raise CodecFileError(f"{where}: not a JSON object")
    field(meta, "n", int, where, int_in(1, header["chunk_size"]))
    field(meta, "symbols_crc", int, where, int_in(0, 2**32 - 1))
    field(meta, "estimated", (int, float), where)
    lengths = [field(meta, k, int, where, int_in(0, body)) for k in ("z_len", "x_len")]
    columns = field(meta, "columns_len", int, where, int_in(0, body))
    if 4 * sum(lengths) + columns != body:
        raise CodecFileError(f"{where}: stream lengths do not add up to the chunk")
    ranges = field(meta, "ranges", list, where)
    features = len(header["schema"]["features"])
    if len(ranges) != features or not all(
        isinstance(r, list)
        and len(r) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**40 for v in r)
        and r[0] <= r[1]
        for r in ranges
    ):
        raise CodecFileError(f"{where}: field 'ranges' is not one [low, high] per feature")


def check_header(header: Any, where: str) -> dict[str, Any]:
    """The header if every field is of the right type and range; CodecFileError otherwise
    (nothing in it is acted on before this passes; schema objects' SQL is checked again, by
    SQLite's parser, before it runs)."""
    if not isinstance(header, dict):
        raise CodecFileError(f"{where}: header is not a JSON object")
    model = field(header, "model", dict, where)
    source = field(model, "source", str, f"{where} model", MODEL_SOURCES.__contains__)
    if source == "adaptive":  # no model: the row contexts it reads (checked when opened)
        field(model, "contexts", list, f"{where} model")
    else:
        field(model, "integer_sha256", str, f"{where} model", _SHA256.fullmatch)
    checkpoint = model.get("checkpoint")
    if model["source"] == "checkpoint":
        field(checkpoint, "sha256", str, f"{where} model.checkpoint", _SHA256.fullmatch)
        field(checkpoint, "path", str, f"{where} model.checkpoint", lambda s: 0 < len(s) <= 4096)
    field(header, "schema", dict, where)
    if header.get("context", "absent") not in CONTEXTS:
        raise CodecFileError(f"{where}: field 'context' is not one of {CONTEXTS}")
    states = field(header, "states", dict, where)
    columns = names(field(states, "columns", list, f"{where} states"), f"{where} states.columns")
    features = names(field(states, "features", list, f"{where} states"), f"{where} features")
    agent = names(field(states, "agent_features", list, f"{where} states"), f"{where} agents")
    field(states, "row_order", str, f"{where} states", ROW_ORDERS.__contains__)
    field(states, "rows", int, f"{where} states", int_in(0, 2**53))
    if not set(features) <= set(columns) or set(agent) & set(columns):
        raise CodecFileError(f"{where}: states features do not match its columns")
    if not {"agent_id", "step_number"} <= set(columns):
        raise CodecFileError(f"{where}: states have no agent_id and step_number columns")
    for key in ("objects", "tables"):
        value = field(header, key, list, where)
        if len(value) > MAX_TABLES * 8:
            raise CodecFileError(f"{where}: field {key!r} lists too many entries")
    names(header["tables"], f"{where} tables", MAX_TABLES)
    field(header, "settings", dict, where)
    field(header, "tolerances", dict, where)
    field(header, "chunk_size", int, where, int_in(1, MAX_CHUNK))
    return header


class Writer:
    """Writes a .mtc file to an open binary file."""

    def __init__(self, fh: BinaryIO, header: dict[str, Any], model: bytes = b"") -> None:
        self.fh = fh
        self.tables = {name: i for i, name in enumerate(header["tables"])}
        head = zlib.compress(json.dumps(header).encode(), 9)
        fh.write(MAGIC + struct.pack("<HII", VERSION, len(head), zlib.crc32(head)) + head)
        fh.write(struct.pack("<QI", len(model), zlib.crc32(model)) + model)
        self.crcs: list[int] = []
        self.states = 0

    def _section(self, tag: bytes, payload: bytes) -> int:
        crc = zlib.crc32(payload)
        self.fh.write(tag + struct.pack("<II", len(payload), crc) + payload)
        self.crcs.append(crc)
        return len(payload) + 12

    def chunk(self, chunk: Chunk) -> int:
        """Append a chunk of agent_states; its size in bytes (framing included)."""
        self.states += int(chunk.meta["n"])
        return self._section(CHUNK, chunk.payload())

    def block(self, table: str, block: bytes) -> int:
        """Append a block of ``table``'s rows (a table the header lists); its size in bytes."""
        return self._section(TABLE_BLOCK, struct.pack("<H", self.tables[table]) + block)

    def close(self) -> None:
        """Write the trailer."""
        crc = zlib.crc32(struct.pack(f"<{len(self.crcs)}I", *self.crcs))
        self.fh.write(END + struct.pack("<IQI", len(self.crcs), self.states, crc))


class Reader:
    """Reads and checks a .mtc file: ``header``, ``model`` bytes, then ``sections()``."""

    def __init__(self, fh: BinaryIO, name: str) -> None:
        self.fh, self.name = fh, name
        self.size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        magic = fh.read(len(MAGIC))
        if magic != MAGIC:
            raise CodecFileError(f"{name} is not a meaning-transform codec file (bad magic)")
        version, n, crc = self._unpack("<HII", "header")
        if version != VERSION:
            raise CodecFileError(
                f"{name} has format version {version}; this version of meaning-transform reads "
                f"format {VERSION} (decode it with the release that wrote it)"
            )
        if n > MAX_HEADER:
            raise CodecFileError(f"{name}: header length {n:,} is above {MAX_HEADER:,}")
        head = self._read(n, "header")
        if zlib.crc32(head) != crc:
            raise CodecFileError(f"{name}: header is corrupted (CRC mismatch)")
        text = inflate(head, MAX_HEADER_INFLATED, f"{name}: header")
        try:
            header = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise CodecFileError(f"{name}: header cannot be read ({e})") from None
        self.header: dict[str, Any] = check_header(header, f"{name}: header")
        size, crc = self._unpack("<QI", "model")
        self.model = self._read(size, "embedded model")
        if zlib.crc32(self.model) != crc:
            raise CodecFileError(f"{name}: embedded model is corrupted (CRC mismatch)")
        self._check_trailer()

    @property
    def num_states(self) -> int:
        """States the trailer says the file holds."""
        return self.states

    def _read(self, n: int, what: str) -> bytes:
        if n > self.size - self.fh.tell():  # before allocating: a length cannot pass the end
            raise CodecFileError(f"{self.name} is truncated or corrupted (the {what})")
        data = self.fh.read(n)
        if len(data) != n:
            raise CodecFileError(f"{self.name} is truncated (in the {what})")
        return data

    def _unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self._read(struct.calcsize(fmt), what))

    def _check_trailer(self) -> None:
        here = self.fh.tell()
        if self.size - here < _END_SIZE:
            raise CodecFileError(f"{self.name} is truncated (no end marker)")
        self.fh.seek(-_END_SIZE, 2)
        tail = self.fh.read(_END_SIZE)
        if tail[: len(END)] != END:
            raise CodecFileError(f"{self.name} is truncated or corrupted (no end marker)")
        self.num_sections, self.states, self.crc = struct.unpack("<IQI", tail[len(END) :])
        self.end = self.size - _END_SIZE
        if self.states != self.header["states"]["rows"]:
            raise CodecFileError(f"{self.name} is corrupted (end marker counts)")
        self.fh.seek(here)
        self._check_frames()

    def _check_frames(self) -> None:
        """Walk every section's frame and CRC once before anything is decoded, so a truncated
        or corrupted file is refused at once, not after most of its output was written (the
        payloads are read again, one at a time, by ``sections``)."""
        here, crcs = self.fh.tell(), []
        for _, _, crc, _ in self._frames():
            crcs.append(crc)
        total = zlib.crc32(struct.pack(f"<{len(crcs)}I", *crcs))
        if (len(crcs), total) != (self.num_sections, self.crc):
            raise CodecFileError(f"{self.name} is corrupted (sections do not match the end marker)")
        self.fh.seek(here)

    def _frames(self) -> Iterator[tuple[bytes, bytes, int, str]]:
        """(tag, payload, CRC, where) of each section, checked; CodecFileError on a bad one."""
        number = 0
        while self.fh.tell() < self.end:
            number += 1
            where = f"{self.name}: section {number}"
            tag = self._read(4, "section tag")
            if tag not in TAGS:
                raise CodecFileError(f"{where} is corrupted (unknown section tag)")
            n, crc = self._unpack("<II", "section header")
            if self.fh.tell() + n > self.end:
                raise CodecFileError(f"{where} is truncated or corrupted (length past the end)")
            payload = self._read(n, "section")
            if zlib.crc32(payload) != crc:
                raise CodecFileError(f"{where} is corrupted (CRC mismatch)")
            yield tag, payload, crc, where

    def sections(self) -> Iterator[tuple[str, Any, str]]:
        """Each section as ("table", (table name, block bytes), where) or ("states", Chunk,
        where), in file order; CodecFileError on any inconsistency."""
        states = 0
        tables = self.header["tables"]
        for tag, payload, _, where in self._frames():
            if tag == CHUNK:
                chunk = Chunk.parse(payload, where, self.header)
                states += int(chunk.meta["n"])
                yield "states", chunk, where
                continue
            if len(payload) < 2 or struct.unpack_from("<H", payload)[0] >= len(tables):
                raise CodecFileError(f"{where}: a block of a table the header does not list")
            yield "table", (tables[struct.unpack_from("<H", payload)[0]], payload[2:]), where
        if states != self.states:
            raise CodecFileError(f"{self.name} is corrupted (chunks do not match the end marker)")
