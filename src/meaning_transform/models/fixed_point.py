"""Exact integer arithmetic for coding distributions: every machine computes the same integers.

The pieces the integer coding model (``integer_model.py``) is built from. Nothing here calls a
float function whose result may differ between machines (no libm ``exp``/``cos``, no float
reduction whose order matters):

- ``exp2_table``: ``2**(-f / 2**LOGIT_BITS)`` in fixed point, from integer square roots only;
- ``cosine_table``: the DCT-II cosines of the absolute head's smooth bins, from a Taylor series
  in Python integers and an integer literal of pi;
- ``exact_matmul``: a matrix product of integers in float64, exact because every product and
  every partial sum is an integer below 2**53 (``check_exact`` proves it from the operands'
  bounds), so any BLAS, summation order, thread count, FMA or GPU gives the same integers;
- ``requantize``: per-column integer multiplier and shift, a bias in the output's unit, then a
  clamp (gemmlowp-style);
- ``frequencies``: an integer softmax of logits in units of ``2**-LOGIT_BITS`` bits, with a
  floor, to integer weights that sum to ``2**24 - N`` exactly. ``constriction``'s
  ``Categorical(perfect=False)`` (0.4.0 through 0.5.0, ``fast_quantized_cdf`` and the lazy model
  alike) puts symbol ``i`` at ``floor(cumsum(p[:i]) * (2**24 - N) / sum(p)) + i``: given these
  integers (exact in float32, their sum too) the scale is exactly 1.0, so it codes symbol ``i``
  with frequency ``q_i + 1`` out of ``2**24``, the integers themselves, on every machine.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

#: constriction's default coders quantize probabilities to 24 bits
PRECISION = 24
#: logits are integers in units of 2**-LOGIT_BITS bits (log2), the exp table has that many rows
LOGIT_BITS = 10
#: the exp table's largest entry (a logit equal to the row's maximum) is 2**EXP_ONE_BITS
EXP_ONE_BITS = 30
#: the cosine basis is in units of 2**-COS_BITS
COS_BITS = 14
#: per-row reciprocal precision of the softmax normalization (e * inv < 2**(24 + 32) < 2**63)
_INV_BITS = 32
#: float64 products of integers are exact while every partial sum stays below this (2**53 less
#: a margin of 8x for any reassociation a BLAS may do, Strassen-like schemes included)
EXACT_LIMIT = 2**50
#: ``requantize`` multipliers are below 2**MULT_BITS
MULT_BITS = 5
#: biases (in the output's unit) are at most this in magnitude
BIAS_LIMIT = 2**40
#: floor(pi * 2**64): the hexadecimal digits of pi (3.243F6A8885A308D3...)
PI_2_64 = 0x3243F6A8885A308D3


@cache
def exp2_table(frac_bits: int = LOGIT_BITS, one_bits: int = EXP_ONE_BITS) -> np.ndarray:
    """``T[f] = round(2**one_bits * 2**(-f / 2**frac_bits))`` for ``f < 2**frac_bits`` (int64).

    Built from integer square roots: ``r_k = 2**(-2**-k)`` by k halvings of 1/2 at 96 + bits of
    fixed point, then each entry is the product of the roots of its bits. Python integers, so
    every machine builds the same table.
    """
    g = 96 + one_bits
    roots = []  # roots[k] = 2**(-2**-(k + 1)), fixed point with g fractional bits
    r = 1 << (g - 1)
    for _ in range(frac_bits):
        r = math.isqrt(r << g)
        roots.append(r)
    out = np.empty(1 << frac_bits, dtype=np.int64)
    for f in range(1 << frac_bits):
        acc = 1 << g
        for b in range(frac_bits):
            if f >> b & 1:  # bit b is worth 2**b / 2**frac_bits = 2**-(frac_bits - b)
                acc = (acc * roots[frac_bits - b - 1]) >> g
        out[f] = (acc + (1 << (g - one_bits - 1))) >> (g - one_bits)
    out.flags.writeable = False
    return out


def _cos_fixed(j: int, n: int, g: int) -> int:
    """``cos(pi * j / (2n))`` for ``0 <= j <= n`` in fixed point with g fractional bits (Taylor
    series in Python integers)."""
    x = (PI_2_64 << (g - 64)) * j // (2 * n)  # the angle, at most pi/2
    term, total, k = 1 << g, 1 << g, 0
    while term:
        term = -(term * x * x >> (2 * g)) // ((2 * k + 1) * (2 * k + 2))
        total += term
        k += 1
    return total


@cache
def _quarter_wave(n: int, bits: int) -> tuple[int, ...]:
    """``round(2**bits * cos(pi * j / (2n)))`` for j = 0..n."""
    g = 80
    return tuple((_cos_fixed(j, n, g) + (1 << (g - bits - 1))) >> (g - bits) for j in range(n + 1))


def cosine_table(n: int, m: int, bits: int = COS_BITS) -> np.ndarray:
    """[m, n] int64: ``round(2**bits * cos(pi * k * (i + 0.5) / n))``, the first m DCT-II
    cosines over n bins (``lossless._cosine_basis`` in integers; m >= n: the identity x 2**bits)."""
    if m >= n:
        return np.eye(n, dtype=np.int64) << bits
    quarter = np.array(_quarter_wave(n, bits), dtype=np.int64)
    j = (np.arange(m)[:, None] * (2 * np.arange(n)[None, :] + 1)) % (4 * n)  # angle pi j / 2n
    j = np.where(j > 2 * n, 4 * n - j, j)  # cos is even around 2n: now 0..2n
    return np.where(j > n, -quarter[np.clip(2 * n - j, 0, n)], quarter[np.clip(j, 0, n)])


def check_exact(bound: float, what: str) -> None:
    """Raise ValueError unless ``bound`` (a sum of |products| a matrix product can reach) keeps
    float64 products of integers exact (below EXACT_LIMIT)."""
    if not bound < EXACT_LIMIT:
        raise ValueError(f"{what}: integer products may reach {bound:.3g} >= 2**50")


def magnitude(x: np.ndarray) -> np.ndarray:
    """|x| as float64 (int64's own abs wraps -2**63 to itself, which a crafted file can hold)."""
    return np.abs(np.asarray(x).astype(np.float64))


def product_bound(weight: np.ndarray, x_max: np.ndarray) -> np.ndarray:
    """Per output row of ``weight`` [out, in], the largest |sum_i w_i x_i| for |x_i| <= x_max
    (float64: within a factor 1 + 2**-50 of the exact bound, which the limits leave room for)."""
    return magnitude(weight) @ magnitude(x_max)


def exact_matmul(x: np.ndarray, weight_t: np.ndarray) -> np.ndarray:
    """int64 [B, in] @ integer-valued float64 [in, out] -> int64 [B, out], exact when the
    model's bounds passed ``check_exact`` (every partial sum is an integer below 2**50)."""
    return (x.astype(np.float64) @ weight_t).astype(np.int64)


def requantize(
    acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, bias: np.ndarray, lo: int, hi: int
) -> np.ndarray:
    """``clip(round(acc * mult / 2**shift) + bias, lo, hi)`` per column, in int64 (round half
    up; a negative shift multiplies). ``check_requantize`` proves no intermediate overflows."""
    left, right = np.maximum(-shift, 0), np.maximum(shift, 0)
    half = (np.int64(1) << right) >> 1
    out = (((acc * mult) << left) + half >> right) + bias
    return np.minimum(np.maximum(out, lo), hi)


def check_requantize(
    bound: np.ndarray, mult: np.ndarray, shift: np.ndarray, bias: np.ndarray, what: str
) -> None:
    """Raise ValueError unless ``requantize`` of accumulators within +-``bound`` (per column)
    keeps every intermediate below 2**62 in magnitude."""
    if ((mult < 0) | (mult >= 1 << MULT_BITS)).any() or ((shift < -62) | (shift > 62)).any():
        raise ValueError(f"{what}: multipliers or shifts out of range")
    if (magnitude(bias) > BIAS_LIMIT).any():
        raise ValueError(f"{what}: biases out of range")
    scaled = bound * mult.astype(np.float64) * 2.0 ** np.maximum(-shift, 0)
    if not (scaled + 2.0 ** np.maximum(shift, 0)).max(initial=0) < 2**62:
        raise ValueError(f"{what}: the rescale may overflow")


def frequencies(logits: np.ndarray, floor: int, sizes: np.ndarray | None = None) -> np.ndarray:
    """Integer logits [..., N] (units of 2**-LOGIT_BITS bits) -> int64 weights q [..., N] with
    each row summing to ``2**PRECISION - N``: constriction codes bin i with frequency
    ``q_i + 1``, i.e. ``floor / 2**24 + (1 - ... ) softmax`` in integers (the float model's FLOOR
    formula), the rounding remainder on the row's (first) maximum.

    ``sizes`` (broadcast over the rows; default N): each row's real bins; the others are
    padding, whose logits must lie more than 62 * 2**LOGIT_BITS below the row's maximum: they get
    weight 0 (frequency 1, never coded), so padded rows of one width are valid distributions.
    """
    table = exp2_table()
    n = logits.shape[-1]
    d = logits.max(axis=-1, keepdims=True) - logits  # >= 0; 0 at the maximum
    e = table[d & ((1 << LOGIT_BITS) - 1)] >> np.minimum(d >> LOGIT_BITS, 62)
    total = e.sum(axis=-1)  # >= 2**EXP_ONE_BITS (the maximum's own entry)
    size = n if sizes is None else np.asarray(sizes, dtype=np.int64)
    free = (1 << PRECISION) - n - size * (floor - 1)  # what the real bins share past the floor
    inv = (free << _INV_BITS) // total  # e * inv <= 2**(PRECISION + _INV_BITS)
    # C order, so the flat view below is q itself (a gathered ``x[:, index]`` may not be)
    q = np.ascontiguousarray((e * inv[..., None]) >> _INV_BITS)  # sums to at most free
    first = logits.argmax(axis=-1).ravel() + np.arange(0, q.size, n)  # flat index per row
    q.reshape(-1)[first] += (free - q.sum(-1)).ravel()
    if sizes is None:
        return q + (floor - 1)
    return q + (floor - 1) * (np.arange(n) < size[..., None])


def code_lengths(q: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Bits constriction spends on symbol ``index[b]`` of each row of weights ``q`` [B, N]."""
    picked = q[np.arange(len(index)), index] + 1
    return PRECISION - np.log2(picked.astype(np.float64))
