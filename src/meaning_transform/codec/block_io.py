"""What a block's column coders write and read: a plan of small numbers and data streams.

The plan (stream 0) holds each coder's choices (which transform, widths, counts); the other
streams hold the data, packed by ``backend``. Unsigned integer arrays are stored at the smallest
byte width that holds their largest value, byte planes apart (all low bytes, then the next...),
which is what lets a general-purpose compressor see the structure of numeric columns.
"""

from __future__ import annotations

import numpy as np
import zstandard

from meaning_transform.codec import backend
from meaning_transform.codec.wire import BlockError, ByteReader, ByteWriter

#: most values one block may decode (rows x columns, JSON fields included): bounds the Python
#: objects a crafted block can make the decoder build
MAX_CELLS = 1 << 24
#: most text one block may build by joining pieces (JSON templates and their fields); the
#: encoder keeps a block's own text far below (``tables.BLOCK_BYTES``)
MAX_TEXT = 1 << 28


class Sink:
    """Collects a block's plan and streams (``tobytes`` packs them)."""

    def __init__(self) -> None:
        self.plan = ByteWriter()
        self.streams: list[bytes] = []

    def put(self, data: bytes) -> None:
        """Append a data stream."""
        self.streams.append(bytes(data))

    def uints(self, a: np.ndarray) -> None:
        """An array of unsigned integers (its length is the reader's to know)."""
        a = np.ascontiguousarray(a, dtype="<u8")
        top = int(a.max()) if len(a) else 0
        width = (top.bit_length() + 7) // 8
        self.plan.uint(width)
        if width:
            planes = a.view(np.uint8).reshape(-1, 8)[:, :width]  # little-endian bytes
            self.put(np.ascontiguousarray(planes.T).tobytes())

    def extend(self, other: Sink) -> None:
        """Append what ``other`` collected (a candidate coding that was chosen)."""
        self.plan.raw(other.plan.getvalue())
        self.streams.extend(other.streams)

    def estimate(self) -> int:
        """About how many bytes this holds once packed (zstd-3 of each stream)."""
        c = zstandard.ZstdCompressor(level=3)
        return len(self.plan.buf) + sum(len(c.compress(s)) for s in self.streams)

    def tobytes(self) -> bytes:
        """The block's bytes."""
        return backend.pack([self.plan.getvalue(), *self.streams])


class Source:
    """Reads what a ``Sink`` wrote, in the same order; every length checked."""

    def __init__(self, data: bytes, where: str) -> None:
        streams = backend.unpack(data, where)
        if not streams:
            raise BlockError(f"{where}: no plan")
        self.where = where
        self.plan = ByteReader(streams[0], where)
        self.streams, self.next = streams[1:], 0
        self.cells = self.text = 0

    def fail(self, what: str) -> BlockError:
        """A one-line error naming this block."""
        return BlockError(f"{self.where}: {what}")

    def take(self) -> bytes:
        """The next data stream."""
        if self.next >= len(self.streams):
            raise self.fail("a stream is missing")
        self.next += 1
        return self.streams[self.next - 1]

    def count(self, n: int) -> None:
        """Account for ``n`` more decoded values (``MAX_CELLS`` per block)."""
        self.cells += n
        if self.cells > MAX_CELLS:
            raise self.fail(f"more than {MAX_CELLS} values in one block")

    def spend(self, nbytes: int) -> None:
        """Account for ``nbytes`` more text built (``MAX_TEXT`` per block)."""
        self.text += nbytes
        if self.text > MAX_TEXT:
            raise self.fail(f"more than {MAX_TEXT} bytes of text in one block")

    def uints(self, n: int) -> np.ndarray:
        """``n`` unsigned integers written by ``Sink.uints``."""
        width = self.plan.uint(8, "a byte width")
        if not width:
            return np.zeros(n, dtype=np.uint64)
        raw = self.take()
        if len(raw) != n * width:
            raise self.fail(f"a stream holds {len(raw)} bytes, not {n} x {width}")
        planes = np.zeros((n, 8), dtype=np.uint8)
        planes[:, :width] = np.frombuffer(raw, dtype=np.uint8).reshape(width, n).T
        return planes.view("<u8").reshape(n).astype(np.uint64)

    def end(self) -> None:
        """Check that every stream and the whole plan were read."""
        self.plan.end()
        if self.next != len(self.streams):
            raise self.fail(f"{len(self.streams) - self.next} unread streams")
