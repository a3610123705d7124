"""The meaning grid: agent states snapped to cells that keep every feature and predicate.

Contract (``MeaningGrid(schema, k)``, ``schema`` fitted, coarseness ``k >= 1``):

- continuous feature with tolerance ``tol``: cells of width ``step = 2 * k * tol`` centred on
  multiples of ``step`` (cell ``m = rint(v / step)``, v in native units). Every predicate
  threshold ``t`` on the feature splits the cell that holds it: ``>`` and ``<=`` put ``t`` on
  the lower side, ``>=`` and ``<`` on the upper side, ``==`` and ``!=`` make ``{t}`` a cell of
  its own. The symbol orders the (sub-)cells densely: ``m + C`` where ``C`` counts the
  threshold crossings the value has passed, so neighbouring cells differ by 1 and per-agent
  differences stay small. The decoded value is the midpoint of the (sub-)cell (``t`` for a
  point cell). Hence every decoded value is within ``k * tol`` of the original (for k = 1:
  within tolerance) and every predicate has the same truth on decoded and original states.
- binary feature: symbol 0/1; categorical: the category index. Both decode exactly.

``encode`` takes the project's data tensor (see ``FeatureSchema.encode``) and returns int64
symbols [N, F]; ``decode`` inverts it to a float32 data tensor, built with the same float
arithmetic as ``FeatureSchema.encode`` so an exact native value round-trips to the identical
float32. Predicate crossings are read with ``FeatureSchema.evaluate_predicates`` (the float32
arithmetic the drift metric uses), so values within float noise of a threshold land on the side
the metric sees. Internally native values are float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from meaning_transform.schema import FeatureSchema, SchemaError

#: op -> crossings ("passed" when the value is at or above t, or strictly above t)
_CROSSINGS = {
    ">": ("above",),
    "<=": ("above",),
    ">=": ("at",),
    "<": ("at",),
    "==": ("at", "above"),
    "!=": ("at", "above"),
}


@dataclass(frozen=True)
class _Crossing:
    """One place where a continuous feature's sub-cell changes: at ``t`` or just above it."""

    t: float
    strict: bool  # True: passed when v > t; False: passed when v >= t
    predicate: int  # the predicate whose truth tells whether it is passed
    passed_when_true: bool  # the predicate's truth equals "passed" (else its negation)


class MeaningGrid:
    """Per-column symbols of agent states on cells of 2 x k x tolerance (see module docstring)."""

    def __init__(self, schema: FeatureSchema, k: float = 1) -> None:
        if not schema.fitted:
            raise SchemaError("MeaningGrid needs a fitted schema; call schema.fit(train) first")
        if not k >= 1:
            raise ValueError(f"grid coarseness k must be >= 1, got {k}")
        self.schema = schema
        self.k = k
        self.steps = {f.name: 2.0 * k * f.tolerance for f in schema.of_kind("continuous")}
        self._crossings = {name: self._crossings_of(name) for name in self.steps}

    def _crossings_of(self, name: str) -> list[_Crossing]:
        """The feature's crossings sorted by position (``>= t`` before ``> t``), deduplicated."""
        found: dict[tuple[float, bool], _Crossing] = {}
        for i, p in enumerate(self.schema.predicates):
            if p.feature != name:
                continue
            t = float(p.value)
            for kind in _CROSSINGS[p.op]:
                strict = kind == "above"
                if p.op in ("==", "!="):  # read from the value itself (no one-sided truth)
                    crossing = _Crossing(t, strict, -1, True)
                else:  # passed = the truth of > / >=, the negation of <= / <
                    crossing = _Crossing(t, strict, i, p.op in (">", ">="))
                found.setdefault((t, strict), crossing)
        return [found[key] for key in sorted(found, key=lambda c: (c[0], c[1]))]

    # ------------------------------------------------------------------ encode
    def encode(self, x: torch.Tensor) -> np.ndarray:
        """Data tensor [N, F] -> int64 symbols [N, F]."""
        schema = self.schema
        x32 = x.detach().cpu().to(torch.float32)
        native = self._native64(x32)
        truth = schema.evaluate_predicates(x32).numpy() if schema.predicates else None
        x_np = x32.numpy()
        out = np.empty(native.shape, dtype=np.int64)
        for i, f in enumerate(schema.features):
            if f.kind != "continuous":
                out[:, i] = np.rint(native[:, i]).astype(np.int64)
                continue
            step = self.steps[f.name]
            m = np.rint(native[:, i] / step)
            passed_total = np.zeros(len(m), dtype=np.int64)
            for c in self._crossings[f.name]:
                if c.predicate >= 0:
                    assert truth is not None
                    passed = truth[:, c.predicate] == c.passed_when_true
                else:  # equality predicates: the same float32 arithmetic they are judged by
                    v32, t32 = x_np[:, i], schema.data_value(f.name, c.t)
                    passed = v32 > t32 if c.strict else v32 >= t32
                # A value within float noise of t may round to a neighbouring cell: keep it
                # on the side of t that the predicate says (it is still within tolerance).
                m_t = np.rint(c.t / step)
                m = np.where(passed, np.maximum(m, m_t), np.minimum(m, m_t))
                passed_total += passed
            out[:, i] = m.astype(np.int64) + passed_total
        return out

    # ------------------------------------------------------------------ decode
    def decode(self, symbols: np.ndarray) -> torch.Tensor:
        """int64 symbols [N, F] -> float32 data tensor (continuous at cell midpoints)."""
        symbols = np.asarray(symbols, dtype=np.int64)
        out = np.empty(symbols.shape, dtype=np.float32)
        for i, f in enumerate(self.schema.features):
            s = symbols[:, i]
            if f.kind != "continuous":
                out[:, i] = s.astype(np.float32)
                continue
            value = self._midpoints(f.name, s)
            norm = self.schema.normalizers[f.name]
            # Same arithmetic as FeatureSchema.encode (float64 subtract, divide, cast).
            out[:, i] = np.subtract(value, norm.mean) / norm.std
        return torch.from_numpy(out)

    def native(self, symbols: np.ndarray) -> np.ndarray:
        """int64 symbols [N, F] -> float64 native values (continuous: the cell midpoints, exact
        in float64; binary/categorical: the code), as a decompressed database stores them."""
        symbols = np.asarray(symbols, dtype=np.int64)
        out = symbols.astype(np.float64)
        for i, f in enumerate(self.schema.features):
            if f.kind == "continuous":
                out[:, i] = self._midpoints(f.name, symbols[:, i])
        return out

    def _midpoints(self, name: str, s: np.ndarray) -> np.ndarray:
        """Native value of each continuous symbol: the midpoint of its (sub-)cell."""
        step = self.steps[name]
        crossings = self._crossings[name]
        if not crossings:
            return s.astype(np.float64) * step
        t = np.array([c.t for c in crossings])
        m_t = np.rint(t / step)
        # Crossing j is passed iff s >= m_t[j] + j + 1 (keys strictly increase).
        keys = m_t + np.arange(len(crossings)) + 1
        passed = np.searchsorted(keys, s, side="right")
        m = (s - passed).astype(np.float64)
        lo = (m - 0.5) * step
        hi = (m + 0.5) * step
        below = passed - 1  # last passed crossing, if it lies in this cell it bounds from below
        has_below = (below >= 0) & (m_t[np.clip(below, 0, None)] == m)
        lo = np.where(has_below, t[np.clip(below, 0, None)], lo)
        above = np.clip(passed, None, len(crossings) - 1)
        has_above = (passed < len(crossings)) & (m_t[above] == m)
        hi = np.where(has_above, t[above], hi)
        return np.where(lo == hi, lo, 0.5 * (lo + hi))

    # ------------------------------------------------------------------ helpers
    def _native64(self, x: torch.Tensor) -> np.ndarray:
        """Data tensor -> float64 native values (continuous), codes as they are otherwise."""
        arr = x.to(torch.float64).numpy().copy()
        for i, f in enumerate(self.schema.features):
            if f.kind == "continuous":
                norm = self.schema.normalizers[f.name]
                arr[:, i] = arr[:, i] * norm.std + norm.mean
        return arr

    def vocab_sizes(self) -> list[int]:
        """Per column: 2 for binary, the vocabulary size for categorical, 0 for continuous."""
        sizes = []
        for f in self.schema.features:
            sizes.append(
                2
                if f.kind == "binary"
                else self.schema.vocab_size(f)
                if f.kind == "categorical"
                else 0
            )
        return sizes
