"""Integer and float columns, exact to the bit, each in the form its values compress best.

Integers: minus their minimum, or as differences from the value before (sorted keys, counters),
zigzagged so small negatives stay small. Floats (float64 bits, ``-0.0``, inf and all):

- ``DECIMAL``: ``x = q / 10**s`` rounded (IEEE division, the same on every machine) plus the
  difference of the bit patterns, so a short decimal (``14.85``) is the integer ``q`` with a 0
  beside it, and a decimal with float noise (``4.549999999999999``) the same ``q`` with a
  difference of a few units in the last place; a value no scale fits costs its bit pattern.
- ``BITS``: the bit patterns; ``XOR``: each XOR the one before (slowly changing values).

Which form is used is decided per block and column by the size zstd-3 gives the packed streams
(the final compression is ``backend``'s). A column with a declared tolerance is coded on the
grid of 2 x tolerance (``GRID``): ``round(x / step) * step``, every value checked to be within
tolerance, the rest kept exactly.
"""

from __future__ import annotations

import numpy as np

from meaning_transform.codec.block_io import Sink, Source

I_MIN, I_DELTA = 0, 1
F_BITS, F_XOR, F_DECIMAL, F_GRID, F_TABLE = range(5)
MAX_SCALE = 17  # 10**s is exact in float64 up to 10**22
_BIG = np.float64(2.0**52)
_U = np.uint64
_POW10 = np.array([10.0**s for s in range(MAX_SCALE + 1)])


def zigzag(v: np.ndarray) -> np.ndarray:
    """int64 -> uint64, 0, -1, 1, -2 ... -> 0, 1, 2, 3 ..."""
    v = np.asarray(v, dtype=np.int64)
    return ((v << 1) ^ (v >> 63)).view(_U)


def unzigzag(z: np.ndarray) -> np.ndarray:
    """Inverse of ``zigzag``."""
    z = np.asarray(z, dtype=_U)
    return ((z >> _U(1)) ^ (_U(0) - (z & _U(1)))).view(np.int64)


def estimate(*arrays: np.ndarray) -> int:
    """Bytes zstd-3 gives the arrays as ``Sink.uints`` packs them: a quick stand-in for the
    final size."""
    probe = Sink()
    for a in arrays:
        probe.uints(a)
    return probe.estimate()


def _deltas(v: np.ndarray) -> np.ndarray:
    d = np.empty_like(v)
    if len(v):
        d[0] = v[0]
        np.subtract(v[1:], v[:-1], out=d[1:])  # wraps modulo 2**64, as cumsum undoes it
    return d


def put_ints(sink: Sink, v: np.ndarray) -> None:
    """An int64 array (its length is the reader's to know)."""
    v = np.asarray(v, dtype=np.int64)
    lo = int(v.min()) if len(v) else 0
    shifted = v.view(_U) - _U(lo & 0xFFFFFFFFFFFFFFFF)
    deltas = zigzag(_deltas(v))
    if len(v) > 1 and estimate(deltas) < estimate(shifted):
        sink.plan.uint(I_DELTA)
        sink.uints(deltas)
    else:
        sink.plan.uint(I_MIN)
        sink.plan.sint(lo)
        sink.uints(shifted)


def take_ints(src: Source, n: int) -> np.ndarray:
    """``n`` int64 values written by ``put_ints``."""
    mode = src.plan.uint(I_DELTA, "an integer coding")
    if mode == I_DELTA:
        return np.cumsum(unzigzag(src.uints(n)), dtype=np.int64)
    lo = src.plan.sint(1 << 63, "a minimum") & 0xFFFFFFFFFFFFFFFF
    return (src.uints(n) + _U(lo)).view(np.int64)


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype="<f8").view("<u8").astype(_U)


def _decimal(x: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q, bit difference of x from q / 10**s) at each value's scale ``s``."""
    p = _POW10[scales]
    with np.errstate(all="ignore"):
        y = np.rint(x * p)
        q = np.where(np.isfinite(y) & (np.abs(y) < _BIG), y, 0.0).astype(np.int64)
    return q, (_bits(x) - _bits(q / p)).view(np.int64)


def _scales(x: np.ndarray) -> np.ndarray:
    """Per value, the decimal scale whose (q, difference) need the fewest significant bits (the
    smallest such scale: a short decimal gets its own number of digits)."""
    best = np.zeros(len(x), dtype=np.int64)
    best_cost = np.full(len(x), np.iinfo(np.int64).max)
    for s in range(MAX_SCALE + 1):
        q, off = _decimal(x, np.full(len(x), s))
        cost = _bitlen(zigzag(off)) + _bitlen(zigzag(q))
        better = cost < best_cost
        best[better], best_cost[better] = s, cost[better]
    return best


def _bitlen(z: np.ndarray) -> np.ndarray:
    """Significant bits of each value (about: from the float exponent, for estimates)."""
    return np.frexp(z.astype(np.float64))[1].astype(np.int64)


def put_reals(
    sink: Sink, x: np.ndarray, tolerance: float | None = None, table: bool = True
) -> None:
    """A float64 array, exact, or within ``tolerance`` when one is declared (``table``: may be
    coded as a table of its distinct values)."""
    x = np.asarray(x, dtype=np.float64)
    if tolerance is not None:
        _put_grid(sink, x, 2.0 * tolerance, tolerance)
        return
    options = [_option(F_BITS, _bits(x))]
    xor = _bits(x)
    xor[1:] ^= _bits(x)[:-1]
    options.append(_option(F_XOR, xor))
    options.append(_decimal_option(x))
    if table and len(x) > 1:
        values, ids, counts = np.unique(_bits(x), return_inverse=True, return_counts=True)
        if len(values) <= len(x) // 2:
            rank = np.argsort(-counts, kind="stable")  # frequent values get small numbers
            order = np.empty_like(rank)
            order[rank] = np.arange(len(rank))
            option = Sink()
            option.plan.uint(F_TABLE)
            option.plan.uint(len(values))
            put_reals(option, values[rank].view("<f8"), table=False)
            put_ints(option, order[ids.reshape(-1)])
            options.append(option)
    sink.extend(min(options, key=Sink.estimate))


def _option(mode: int, words: np.ndarray) -> Sink:
    option = Sink()
    option.plan.uint(mode)
    option.uints(words)
    return option


def _decimal_option(x: np.ndarray) -> Sink:
    scales = _scales(x)
    q, off = _decimal(x, scales)
    option = Sink()
    option.plan.uint(F_DECIMAL)
    put_ints(option, scales)
    put_ints(option, q)
    put_ints(option, off)
    return option


def take_reals(src: Source, n: int, grid: bool = True, table: bool = True) -> np.ndarray:
    """``n`` float64 values written by ``put_reals`` (``grid``: may be on a tolerance grid;
    ``table``: may be a table of distinct values)."""
    mode = src.plan.uint(F_TABLE, "a float coding")
    if mode == F_GRID and grid:
        return _take_grid(src, n)
    if mode == F_TABLE and table:
        k = src.plan.uint(n, "the number of distinct values")
        values = take_reals(src, k, grid=False, table=False)
        ids = take_ints(src, n)
        if n and (ids.min() < 0 or ids.max() >= k):
            raise src.fail("a float table index is out of range")
        return values[ids]
    if mode == F_DECIMAL:
        scales = take_ints(src, n)
        if n and (scales.min() < 0 or scales.max() > MAX_SCALE):
            raise src.fail("a decimal scale is out of range")
        q = take_ints(src, n)
        off = take_ints(src, n)
        bits = _bits(q / _POW10[scales]) + off.view(_U)
    elif mode in (F_BITS, F_XOR):
        bits = src.uints(n)
        if mode == F_XOR:
            bits = np.bitwise_xor.accumulate(bits)
    else:
        raise src.fail(f"float coding {mode} is not allowed here")
    return bits.astype("<u8").view("<f8").astype(np.float64)


def _put_grid(sink: Sink, x: np.ndarray, step: float, tolerance: float) -> None:
    """Values on the grid ``k * step``; those that would not be within tolerance kept exactly."""
    with np.errstate(all="ignore"):
        k = np.rint(x / step)
        ok = np.isfinite(k) & (np.abs(k) < 2.0**40)
        k = np.where(ok, k, 0.0).astype(np.int64)
        ok &= np.abs(k * step - x) <= tolerance
    k[~ok] = 0
    sink.plan.uint(F_GRID)
    sink.plan.raw(np.float64(step).astype("<f8").tobytes())
    put_ints(sink, k)
    rows = np.flatnonzero(~ok)
    sink.plan.uint(len(rows))
    if len(rows):
        put_ints(sink, rows)
        put_reals(sink, x[rows], table=False)


def _take_grid(src: Source, n: int) -> np.ndarray:
    step = np.frombuffer(src.plan.take(8, "a grid step"), dtype="<f8")[0].astype(np.float64)
    if not (np.isfinite(step) and step > 0):
        raise src.fail("a grid step is not a positive number")
    k = take_ints(src, n)
    if np.abs(k).max(initial=0) >= 2**40:
        raise src.fail("a grid value is out of range")
    x = k * step
    m = src.plan.uint(n, "the number of exact values")
    if m:
        rows = take_ints(src, m)
        if rows.min() < 0 or rows.max() >= n:
            raise src.fail("an exact value's row is out of range")
        x[rows] = take_reals(src, m, grid=False, table=False)
    return x
