"""A block's byte streams, each stored, zstd-19 or xz (LZMA2, text or flat settings)
compressed: whichever is smallest.

Streams shorter than ``GROUP_BELOW`` bytes are concatenated and compressed as one (a compressor's
own overhead would cost more than they hold). Layout::

    n | per stream: raw length << 3 | method | grouped: method, stored length
      | per separate stream: stored length | payloads (group first) | pad length | pad

Decoding is bounded before anything is decompressed: the streams' raw lengths add up to at most
``MAX_BLOCK_RAW`` and to at most ``FLOOR + RATIO x`` the block's size, and each stream is
decompressed with its raw length as the maximum output. The encoder pads the rare block that
would expand more than that (a column of one huge repeated value), so a crafted 1 MB block can
never make the decoder allocate more than ~256 MB.
"""

from __future__ import annotations

import lzma
from collections.abc import Sequence

import zstandard

from meaning_transform.codec.wire import BlockError, ByteReader, ByteWriter

STORED, ZSTD, XZ, XZ_FLAT, GROUPED = range(5)
_METHOD_BITS = 3
GROUP_BELOW = 256
MAX_STREAMS = 1 << 16
MAX_BLOCK_RAW = 1 << 30
FLOOR, RATIO = 1 << 20, 256
_ZSTD_LEVEL = 19


def _dict_size(n: int) -> int:
    """LZMA2 dictionary for ``n`` raw bytes (the decoder derives the same from the length)."""
    return min(1 << 26, max(1 << 12, 1 << max(n - 1, 1).bit_length()))


def _xz_filters(n: int, flat: bool = False) -> list[dict]:
    """LZMA2 at preset 9e; ``flat``: no literal context or position bits (lc = lp = pb = 0),
    which suits byte planes of numbers better than text's defaults."""
    f = {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": _dict_size(n)}
    if flat:
        f.update(lc=0, lp=0, pb=0)
    return [f]


def compress(raw: bytes, methods: Sequence[int] = (ZSTD, XZ, XZ_FLAT)) -> tuple[int, bytes]:
    """(method, bytes): the smallest of storing ``raw`` and each compressor in ``methods``."""
    best = (STORED, raw)
    for m in methods:
        if m == ZSTD:
            c = zstandard.ZstdCompressor(
                level=_ZSTD_LEVEL, write_content_size=False, write_checksum=False
            ).compress(raw)
        else:
            filters = _xz_filters(len(raw), m == XZ_FLAT)
            c = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=filters)
        if len(c) < len(best[1]):
            best = (m, c)
    return best


def decompress(method: int, data: bytes, n: int, where: str) -> bytes:
    """``data`` decompressed to exactly ``n`` bytes, never more (``BlockError`` otherwise)."""
    try:
        if method == STORED:
            out = data
        elif method == ZSTD:
            if zstandard.frame_content_size(data) not in (-1, n):
                raise ValueError("frame size differs")
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=max(n, 1))
        elif method in (XZ, XZ_FLAT):
            d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_xz_filters(n, method == XZ_FLAT))
            out = d.decompress(data, max_length=n + 1)
        else:
            raise ValueError(f"method {method}")
    except (zstandard.ZstdError, lzma.LZMAError, ValueError) as e:
        raise BlockError(f"{where}: a stream does not decompress ({e})") from None
    if len(out) != n:
        raise BlockError(f"{where}: a stream decompresses to {len(out)} bytes, not {n}")
    return out


def pack(streams: Sequence[bytes], methods: Sequence[int] = (ZSTD, XZ, XZ_FLAT)) -> bytes:
    """All of a block's streams as one byte string, each the smallest of ``methods``."""
    if len(streams) > MAX_STREAMS:
        raise ValueError(f"{len(streams)} streams in one block (at most {MAX_STREAMS})")
    grouped = [s for s in streams if len(s) < GROUP_BELOW]
    g_method, g_bytes = compress(b"".join(grouped), methods)
    head, payloads, total_raw = ByteWriter(), [g_bytes], 0
    head.uint(len(streams))
    separate = []
    for s in streams:
        total_raw += len(s)
        if len(s) < GROUP_BELOW:
            head.uint(len(s) << _METHOD_BITS | GROUPED)
            continue
        method, c = compress(s, methods)
        head.uint(len(s) << _METHOD_BITS | method)
        separate.append(len(c))
        payloads.append(c)
    head.uint(g_method)
    head.uint(len(g_bytes))
    for n in separate:
        head.uint(n)
    body = head.getvalue() + b"".join(payloads)
    if total_raw > MAX_BLOCK_RAW:
        raise ValueError(f"a block of {total_raw} bytes (at most {MAX_BLOCK_RAW})")
    pad = max(-(-(total_raw - FLOOR) // RATIO) - len(body) - 1, 0)
    tail = ByteWriter()
    tail.uint(pad)
    return body + tail.getvalue() + bytes(pad)


def unpack(data: bytes, where: str) -> list[bytes]:
    """Inverse of ``pack``; every length checked before anything is decompressed."""
    r = ByteReader(data, where)
    n = r.uint(MAX_STREAMS, "the number of streams")
    budget = min(MAX_BLOCK_RAW, FLOOR + RATIO * len(data))
    kinds, total = [], 0
    for _ in range(n):
        v = r.uint(budget << _METHOD_BITS | 7, "a stream length")
        raw, method = v >> _METHOD_BITS, v & 7
        if method > GROUPED:
            raise r.fail(f"compression method {method} does not exist")
        total += raw
        if total > budget:
            raise r.fail(f"streams claim {total} bytes, more than the block allows ({budget})")
        if method == GROUPED and raw >= GROUP_BELOW:
            raise r.fail("a grouped stream is too long")
        kinds.append((raw, method))
    g_method = r.uint(XZ_FLAT, "a compression method")
    g_len = r.uint(r.left(), "the group's length")
    lens = [r.uint(r.left(), "a stored length") for raw, m in kinds if m != GROUPED]
    g_raw = sum(raw for raw, m in kinds if m == GROUPED)
    group = decompress(g_method, r.take(g_len, "the grouped streams"), g_raw, where)
    out, g_pos, sep = [], 0, iter(lens)
    for raw, method in kinds:
        if method == GROUPED:
            out.append(group[g_pos : g_pos + raw])
            g_pos += raw
        else:
            out.append(decompress(method, r.take(next(sep), "a stream"), raw, where))
    pad = r.uint(r.left(), "the padding")
    r.take(pad, "the padding")
    r.end()
    return out
