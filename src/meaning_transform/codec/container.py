"""The ``.mtc`` file format: a header, an optional embedded model, chunks, a trailer.

::

    magic  b"MTCODEC\\0"  | version u16 | header length u32 | header CRC-32 u32 | header (zlib JSON)
    model  length u64 | CRC-32 u32 | bytes (length 0 when the model is not embedded)
    chunk* b"CHNK" | payload length u32 | payload CRC-32 u32 | payload
    end    b"MTCEND\\0\\0" | chunks u32 | states u64 | CRC-32 of the chunk CRCs u32

A chunk's payload: meta length u32 | meta (JSON: rows, stream lengths, symbol CRC, the model's
estimate) | latent words | symbol words | key/other columns (zlib). All integers little-endian.
Any mismatch (magic, version, a CRC, a length, the trailer's counts) is a ``CodecFileError``, so
a truncated or corrupted file never decodes into a database.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from meaning_transform.errors import DataError

MAGIC = b"MTCODEC\0"
VERSION = 1
CHUNK = b"CHNK"
END = b"MTCEND\0\0"
_END_SIZE = len(END) + 4 + 8 + 4


class CodecFileError(DataError):
    """A .mtc file is truncated, corrupted, of another version or not a .mtc file."""


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
    def parse(cls, payload: bytes, where: str) -> Chunk:
        """Inverse of ``payload``."""
        try:
            (n,) = struct.unpack_from("<I", payload)
            meta = json.loads(payload[4 : 4 + n])
            off = 4 + n
            z = np.frombuffer(payload, "<u4", meta["z_len"], off)
            off += 4 * meta["z_len"]
            x = np.frombuffer(payload, "<u4", meta["x_len"], off)
            off += 4 * meta["x_len"]
            columns = payload[off : off + meta["columns_len"]]
            if off + meta["columns_len"] != len(payload):
                raise ValueError("lengths do not add up")
        except (ValueError, KeyError, struct.error, TypeError) as e:
            raise CodecFileError(f"{where}: chunk cannot be parsed ({e})") from None
        return cls(meta, z.astype(np.uint32), x.astype(np.uint32), columns)


class Writer:
    """Writes a .mtc file to an open binary file."""

    def __init__(self, fh: BinaryIO, header: dict[str, Any], model: bytes = b"") -> None:
        self.fh = fh
        head = zlib.compress(json.dumps(header).encode(), 9)
        fh.write(MAGIC + struct.pack("<HII", VERSION, len(head), zlib.crc32(head)) + head)
        fh.write(struct.pack("<QI", len(model), zlib.crc32(model)) + model)
        self.crcs: list[int] = []
        self.states = 0

    def chunk(self, chunk: Chunk) -> int:
        """Append a chunk; its size in bytes (framing included)."""
        payload = chunk.payload()
        crc = zlib.crc32(payload)
        self.fh.write(CHUNK + struct.pack("<II", len(payload), crc) + payload)
        self.crcs.append(crc)
        self.states += int(chunk.meta["n"])
        return len(payload) + 12

    def close(self) -> None:
        """Write the trailer."""
        crc = zlib.crc32(struct.pack(f"<{len(self.crcs)}I", *self.crcs))
        self.fh.write(END + struct.pack("<IQI", len(self.crcs), self.states, crc))


class Reader:
    """Reads and checks a .mtc file: ``header``, ``model`` bytes, then ``chunks()``."""

    def __init__(self, fh: BinaryIO, name: str) -> None:
        self.fh, self.name = fh, name
        magic = fh.read(len(MAGIC))
        if magic != MAGIC:
            raise CodecFileError(f"{name} is not a meaning-transform codec file (bad magic)")
        version, n, crc = self._unpack("<HII", "header")
        if version != VERSION:
            raise CodecFileError(f"{name} has format version {version}; this reads {VERSION}")
        head = self._read(n, "header")
        if zlib.crc32(head) != crc:
            raise CodecFileError(f"{name}: header is corrupted (CRC mismatch)")
        try:
            self.header: dict[str, Any] = json.loads(zlib.decompress(head))
        except (zlib.error, ValueError) as e:
            raise CodecFileError(f"{name}: header cannot be read ({e})") from None
        size, crc = self._unpack("<QI", "model")
        self.model = self._read(size, "embedded model")
        if zlib.crc32(self.model) != crc:
            raise CodecFileError(f"{name}: embedded model is corrupted (CRC mismatch)")
        self._check_trailer()

    def _read(self, n: int, what: str) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise CodecFileError(f"{self.name} is truncated (in the {what})")
        return data

    def _unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self._read(struct.calcsize(fmt), what))

    def _check_trailer(self) -> None:
        here = self.fh.tell()
        self.fh.seek(0, 2)
        if self.fh.tell() - here < _END_SIZE:
            raise CodecFileError(f"{self.name} is truncated (no end marker)")
        self.fh.seek(-_END_SIZE, 2)
        tail = self.fh.read(_END_SIZE)
        if tail[: len(END)] != END:
            raise CodecFileError(f"{self.name} is truncated or corrupted (no end marker)")
        self.num_chunks, self.num_states, self.crc = struct.unpack("<IQI", tail[len(END) :])
        self.end = self.fh.seek(-_END_SIZE, 2)
        self.fh.seek(here)

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk, CRC-checked; CodecFileError on any inconsistency."""
        crcs, states = [], 0
        while self.fh.tell() < self.end:
            where = f"{self.name}: chunk {len(crcs) + 1}"
            if self._read(len(CHUNK), "chunk marker") != CHUNK:
                raise CodecFileError(f"{where} is corrupted (bad chunk marker)")
            n, crc = self._unpack("<II", "chunk header")
            if self.fh.tell() + n > self.end:
                raise CodecFileError(f"{where} is truncated or corrupted (length past the end)")
            payload = self._read(n, "chunk")
            if zlib.crc32(payload) != crc:
                raise CodecFileError(f"{where} is corrupted (CRC mismatch)")
            crcs.append(crc)
            chunk = Chunk.parse(payload, where)
            states += int(chunk.meta["n"])
            yield chunk
        total = zlib.crc32(struct.pack(f"<{len(crcs)}I", *crcs))
        if (len(crcs), states, total) != (self.num_chunks, self.num_states, self.crc):
            raise CodecFileError(f"{self.name} is corrupted (chunks do not match the end marker)")
