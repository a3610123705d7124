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

``encode`` takes the project's data tensor (see ``schema.table.encode``) and returns int64
symbols [N, F]; ``decode`` inverts it to a float32 data tensor, built with the same float
arithmetic as ``schema.table.encode`` so an exact native value round-trips to the identical
float32. Predicate crossings are read with ``SchemaLayout.evaluate_predicates`` (the float32
arithmetic the drift metric uses), so values within float noise of a threshold land on the side
the metric sees. Internally native values are float64.

``MeaningGrid`` (numpy, per feature) is the reference; ``GridSymbols`` computes the same symbols
and values in torch, vectorized over columns, for the grid path's every training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from meaning_transform.schema import FeatureSchema, SchemaError
from meaning_transform.schema.layout import SchemaLayout

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


def _side(m: np.ndarray, passed: np.ndarray, t: float, step: float) -> np.ndarray:
    """Cells ``m`` kept on the side of threshold ``t`` that ``passed`` says."""
    m_t = np.rint(t / step)
    return np.where(passed, np.maximum(m, m_t), np.minimum(m, m_t))


class MeaningGrid:
    """Per-column symbols of agent states on cells of 2 x k x tolerance (see module docstring)."""

    def __init__(self, schema: FeatureSchema, k: float = 1) -> None:
        if not schema.fitted:
            raise SchemaError("MeaningGrid needs a fitted schema (fit it to a training table)")
        if not k >= 1:
            raise ValueError(f"grid coarseness k must be >= 1, got {k}")
        self.schema = schema
        self.layout = SchemaLayout(schema)  # on the CPU, where the grid computes
        self.k = k
        self.steps = {f.name: 2.0 * k * f.tolerance for f in schema.of_kind("continuous")}
        self._crossings = {name: self._crossings_of(name) for name in self.steps}
        self._midpoint_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

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
        truth = self.layout.evaluate_predicates(x32).numpy() if schema.predicates else None
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
                m = _side(m, passed, c.t, step)
                passed_total += passed
            out[:, i] = m.astype(np.int64) + passed_total
        return out

    def cells(self, name: str, native: np.ndarray) -> np.ndarray:
        """The symbols of continuous feature ``name``'s native values (float64), each
        threshold crossing read from the value alone: ``encode``'s symbols for a schema whose
        predicates on the feature read only it (else a symbol may differ from ``encode``'s by
        one near a threshold). Callers take them as guesses, not as the states' symbols."""
        native = np.asarray(native, dtype=np.float64)
        step = self.steps[name]
        m = np.rint(native / step)
        passed_total = np.zeros(len(m), dtype=np.int64)
        for c in self._crossings[name]:
            passed = native > c.t if c.strict else native >= c.t
            m = _side(m, passed, c.t, step)
            passed_total += passed
        return m.astype(np.int64) + passed_total

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
            # Same arithmetic as schema.table.encode (float64 subtract, divide, cast).
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
        t, m_t, keys = self._midpoint_tables(name)
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

    def _midpoint_tables(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(crossing values t, their cells m_t, search keys) of a feature, computed once."""
        cache = self._midpoint_cache
        if name not in cache:
            crossings, step = self._crossings[name], self.steps[name]
            t = np.array([c.t for c in crossings])
            m_t = np.rint(t / step)
            # Crossing j is passed iff s >= m_t[j] + j + 1 (keys strictly increase).
            cache[name] = (t, m_t, m_t + np.arange(len(crossings)) + 1)
        return cache[name]

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


class GridSymbols(nn.Module):
    """``MeaningGrid.encode`` / ``decode`` of some columns in torch, vectorized over columns.

    The training path's twin of the numpy reference: the same float64 arithmetic (multiply,
    add, divide, round half to even) and the same float32 comparisons with each crossing's
    threshold, so the symbols and decoded values are identical (``tests/test_grid.py`` checks
    it on edge values), with no per-feature Python loop and no trip to numpy: it runs on the
    data's device. Per-column constants are buffers; crossings are padded to the most any
    column has (a padded crossing is never passed and never moves the cell).
    """

    def __init__(self, grid: MeaningGrid, columns: list[int] | torch.Tensor) -> None:
        super().__init__()
        schema = grid.schema
        cols = [int(c) for c in torch.as_tensor(columns).flatten().tolist()]
        feats = [schema.features[c] for c in cols]
        crossings = [grid._crossings.get(f.name, []) for f in feats]
        width = max((len(c) for c in crossings), default=0)
        inf = float("inf")
        rows = {k: [] for k in ("t", "m_t", "t32", "strict", "negated", "valid")}
        for f, cs in zip(feats, crossings, strict=True):
            step = grid.steps.get(f.name, 1.0)
            pad = width - len(cs)
            rows["t"].append([c.t for c in cs] + [inf] * pad)
            rows["m_t"].append([float(np.rint(c.t / step)) for c in cs] + [inf] * pad)
            rows["t32"].append([schema.data_value(f.name, c.t) for c in cs] + [inf] * pad)
            rows["strict"].append([c.strict for c in cs] + [False] * pad)
            # "<" and "<=": passed is the negation of the predicate's truth (differs from >=, >
            # only on NaN); == and != (predicate -1) and >, >= read the comparison itself
            negated = [c.predicate >= 0 and not c.passed_when_true for c in cs]
            rows["negated"].append(negated + [False] * pad)
            rows["valid"].append([True] * len(cs) + [False] * pad)
        continuous = [f.kind == "continuous" for f in feats]
        norms = [schema.normalizers[f.name] if f.kind == "continuous" else None for f in feats]
        f64 = torch.float64
        buffers = {
            "columns": torch.tensor(cols, dtype=torch.long),
            "continuous": torch.tensor(continuous),
            "mean": torch.tensor([n.mean if n else 0.0 for n in norms], dtype=f64),
            "std": torch.tensor([n.std if n else 1.0 for n in norms], dtype=f64),
            "step": torch.tensor([grid.steps.get(f.name, 1.0) for f in feats], dtype=f64),
            "has_crossings": torch.tensor([bool(c) for c in crossings]),
            "count": torch.tensor([len(c) for c in crossings], dtype=torch.long),
            "t": torch.tensor(rows["t"], dtype=f64).reshape(len(cols), width),
            "m_t": torch.tensor(rows["m_t"], dtype=f64).reshape(len(cols), width),
            "t32": torch.tensor(rows["t32"], dtype=torch.float32).reshape(len(cols), width),
            "strict": torch.tensor(rows["strict"], dtype=torch.bool).reshape(len(cols), width),
            "negated": torch.tensor(rows["negated"], dtype=torch.bool).reshape(len(cols), width),
            "valid": torch.tensor(rows["valid"], dtype=torch.bool).reshape(len(cols), width),
        }
        # keys of the decode: crossing j is passed iff s >= m_t[j] + j + 1 (+inf when padded)
        buffers["keys"] = buffers["m_t"] + torch.arange(width, dtype=f64) + 1
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)
        self.width = width
        self.any_negated = bool(buffers["negated"].any())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data tensor [N, F] -> int64 symbols [N, len(columns)], as ``MeaningGrid.encode``."""
        x32 = x.detach()[:, self.columns].to(torch.float32)
        # binary/categorical: mean 0, std 1, step 1, no crossings: rint of the code itself
        m = torch.round((x32.to(torch.float64) * self.std + self.mean) / self.step)
        if not self.width:
            return m.long()
        v = x32.unsqueeze(2)  # [N, C, 1] against [C, width]
        passed = torch.where(self.strict, v > self.t32, v >= self.t32)
        if self.any_negated:  # not (v < t) is v >= t, and not (v <= t) is v > t, but on NaN
            passed = passed | (self.negated & v.isnan())
        passed = passed & self.valid
        # a value within float noise of t stays on the side of t that the comparison says
        for j in range(self.width):  # in the reference's order (it is order-dependent)
            m_t = self.m_t[:, j]
            m = torch.where(passed[:, :, j], torch.maximum(m, m_t), torch.minimum(m, m_t))
        return m.long() + passed.sum(2)

    def decode(self, symbols: torch.Tensor) -> torch.Tensor:
        """int64 symbols [N, len(columns)] -> float32 data-tensor values of those columns."""
        s = symbols.to(torch.float64)
        if self.width:
            passed = (s.unsqueeze(2) >= self.keys).sum(2)  # crossings passed
            m = s - passed
            lo, hi = (m - 0.5) * self.step, (m + 0.5) * self.step
            below = (passed - 1).clamp_min(0).unsqueeze(2)
            has_below = (passed >= 1) & (self._at(self.m_t, below) == m)
            lo = torch.where(has_below, self._at(self.t, below), lo)
            above = torch.minimum(passed, (self.count - 1).clamp_min(0)).unsqueeze(2)
            has_above = (passed < self.count) & (self._at(self.m_t, above) == m)
            hi = torch.where(has_above, self._at(self.t, above), hi)
            mid = torch.where(lo == hi, lo, 0.5 * (lo + hi))
            value = torch.where(self.has_crossings, mid, s * self.step)
        else:
            value = s * self.step
        # the same arithmetic as schema.table.encode (float64 subtract, divide, cast)
        out = ((value - self.mean) / self.std).to(torch.float32)
        return torch.where(self.continuous, out, s.to(torch.float32))

    @staticmethod
    def _at(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``table[c, index[n, c, 0]]`` for every state n and column c -> [N, C]."""
        return table.expand(index.shape[0], -1, -1).gather(2, index).squeeze(2)
