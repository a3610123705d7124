"""Reading what a file says about sizes without trusting it: bounded decompression and the
checks of JSON fields read from a file."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

from meaning_transform.errors import DataError


class CodecFileError(DataError):
    """A .mtc file is truncated, corrupted, crafted, of another version or not a .mtc file."""


def inflate(data: bytes, max_size: int, what: str) -> bytes:
    """zlib-decompress ``data`` to at most ``max_size`` bytes (CodecFileError beyond: a
    decompression bomb never allocates more than ``max_size``)."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, max_size)
        if d.unconsumed_tail or (not d.eof and d.decompress(b"", 1)):
            raise CodecFileError(f"{what} inflates to more than {max_size:,} bytes")
        if not d.eof or d.unused_data:
            raise CodecFileError(f"{what} is not one complete zlib stream")
    except zlib.error as e:
        raise CodecFileError(f"{what} cannot be decompressed ({e})") from None
    return out


def field(
    obj: Any, key: str, kind: type | tuple[type, ...], where: str, check: Callable | None = None
) -> Any:
    """``obj[key]`` if ``obj`` is a dict holding a value of ``kind`` (bool is not an int) that
    passes ``check``; CodecFileError naming ``where.key`` otherwise."""
    if not isinstance(obj, dict) or key not in obj:
        raise CodecFileError(f"{where}: field {key!r} is missing")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise CodecFileError(f"{where}: field {key!r} has the wrong type")
    if isinstance(value, float) and not math.isfinite(value):
        raise CodecFileError(f"{where}: field {key!r} is not finite")
    if check is not None and not check(value):
        raise CodecFileError(f"{where}: field {key!r} is out of range")
    return value


def int_in(lo: int, hi: int) -> Callable[[Any], bool]:
    """A check: an integer in [lo, hi]."""
    return lambda v: lo <= v <= hi


def names(value: Any, where: str, limit: int = 4096) -> list[str]:
    """A list of at most ``limit`` distinct, non-empty strings of at most 256 characters."""
    if not isinstance(value, list) or len(value) > limit:
        raise CodecFileError(f"{where}: not a list of at most {limit} names")
    if not all(isinstance(v, str) and 0 < len(v) <= 256 and "\0" not in v for v in value):
        raise CodecFileError(f"{where}: names must be non-empty strings of at most 256 characters")
    if len(set(value)) != len(value):
        raise CodecFileError(f"{where}: a name appears twice")
    return value
