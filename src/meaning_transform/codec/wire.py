"""Bytes in and out of a table block: varints and bounded reads.

A block's bytes come from a file someone else may have written, so ``ByteReader`` checks every
count and length against the bytes that remain and against a caller's limit *before* anything
is allocated, and says what was wrong in one line (``BlockError``).
"""

from __future__ import annotations

from meaning_transform.errors import DataError


class BlockError(DataError):
    """A table block is truncated, corrupted or claims more than the format allows."""


class ByteWriter:
    """Appends unsigned varints (LEB128), signed varints (zigzag) and length-prefixed bytes."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def uint(self, v: int) -> None:
        """An unsigned integer, 7 bits per byte."""
        if v < 0:
            raise ValueError(f"uint of a negative number {v}")
        while v >= 0x80:
            self.buf.append((v & 0x7F) | 0x80)
            v >>= 7
        self.buf.append(v)

    def sint(self, v: int) -> None:
        """A signed integer (zigzag)."""
        self.uint(v * 2 if v >= 0 else -v * 2 - 1)

    def raw(self, b: bytes) -> None:
        """Bytes as they are (the reader must know their length)."""
        self.buf += b

    def blob(self, b: bytes) -> None:
        """Length, then the bytes."""
        self.uint(len(b))
        self.buf += b

    def text(self, s: str) -> None:
        """A string as UTF-8 (lone surrogates from undecodable text kept as their bytes)."""
        self.blob(s.encode("utf-8", "surrogateescape"))

    def getvalue(self) -> bytes:
        """Everything written."""
        return bytes(self.buf)


class ByteReader:
    """Reads what ``ByteWriter`` wrote; every value checked against ``limit`` and the bytes left."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.pos, self.where = memoryview(data), 0, where

    def fail(self, what: str) -> BlockError:
        """A one-line error naming this block."""
        return BlockError(f"{self.where}: {what}")

    def left(self) -> int:
        """Bytes not read yet."""
        return len(self.data) - self.pos

    def uint(self, limit: int, what: str = "a count") -> int:
        """An unsigned varint at most ``limit``."""
        v = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise self.fail(f"truncated (in {what})")
            b = self.data[self.pos]
            self.pos += 1
            v |= (b & 0x7F) << shift
            if v > limit:
                raise self.fail(f"{what} is larger than {limit}")
            if b < 0x80:
                return v
            shift += 7
            if shift > 63:
                raise self.fail(f"{what} is not a valid varint")

    def sint(self, limit: int, what: str = "a number") -> int:
        """A zigzag varint of magnitude at most ``limit``."""
        z = self.uint(2 * limit + 1, what)
        return z // 2 if z % 2 == 0 else -(z + 1) // 2

    def take(self, n: int, what: str = "bytes") -> bytes:
        """The next ``n`` bytes (``n`` checked against what remains)."""
        if n < 0 or n > self.left():
            raise self.fail(f"truncated ({what} of {n} bytes, {self.left()} left)")
        out = self.data[self.pos : self.pos + n].tobytes()
        self.pos += n
        return out

    def blob(self, limit: int, what: str = "bytes") -> bytes:
        """Length-prefixed bytes, at most ``limit``."""
        return self.take(self.uint(min(limit, self.left()), f"length of {what}"), what)

    def text(self, limit: int, what: str = "a name") -> str:
        """A string written by ``ByteWriter.text``."""
        return self.blob(limit, what).decode("utf-8", "surrogateescape")

    def u8(self, what: str = "a byte") -> int:
        """One byte."""
        return self.take(1, what)[0]

    def end(self) -> None:
        """Check that nothing is left over."""
        if self.left():
            raise self.fail(f"{self.left()} unexpected bytes at the end")
