"""Classical baselines a learned code must beat: the meaning grid coded with order-0 tables.

Two codes of the grid symbols of ``MeaningGrid(schema, k)`` (see grid.py), each with tables fitted
on the training split and measured on an evaluated split:

- **quantizer**: every column coded on its own with an order-0 table;
- **delta**: states in (agent, step) order, each coded as the per-column difference from the same
  agent's previous state (binary: xor; categorical: difference mod vocabulary size; continuous:
  difference of symbols), an agent's first state with the quantizer's tables.

A table covers the training range of its column (categorical/binary: the whole vocabulary), every
value there counted +1/2, plus an escape bin (count 1/2). An escaped value is followed by its side
(1 bit), the bit length of its distance d >= 1 past the range (log2 31 bits) and the bits of d below its
leading one; every one of those bits is counted. ``bits_per_state`` is the cross-entropy (sum over
columns, mean over states); ``coded_bits_per_state`` is the size of the same symbols really coded
with ``constriction`` (ANS). ``drift`` is the project's ``SemanticDrift`` on (x, decoded grid
state); both codes are lossless on the grid, so they share it, and k = 1 gives drift 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np
import torch

from meaning_transform.grid import MeaningGrid
from meaning_transform.metrics import SemanticDrift
from meaning_transform.models.bottlenecks.coding import decode_escapes, encode_escapes, escape_bits
from meaning_transform.schema import FeatureSchema

KS = (1, 2, 4, 8, 16)
_SMOOTHING = 0.5  # count added to every value of a table's range and to its escape bin


@dataclass(frozen=True)
class Table:
    """Order-0 probabilities of the integers ``lo .. lo + len(probs) - 2``, escape last."""

    lo: int
    probs: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, lo: int | None = None, hi: int | None = None) -> Table:
        """Smoothed table of ``values`` over ``lo..hi`` (default: their range)."""
        if lo is None or hi is None:
            lo, hi = (int(values.min()), int(values.max())) if len(values) else (0, 0)
        counts = np.bincount(values - lo, minlength=hi - lo + 1).astype(np.float64)
        counts = np.append(counts, 0.0) + _SMOOTHING
        return cls(lo, counts / counts.sum())

    @property
    def size(self) -> int:
        """Number of in-range values (the escape bin's index)."""
        return len(self.probs) - 1

    def index(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(table index with escapes at ``size``, boolean mask of the escaped values)."""
        idx = values - self.lo
        escaped = (idx < 0) | (idx >= self.size)
        return np.where(escaped, self.size, idx), escaped

    def bits(self, values: np.ndarray) -> np.ndarray:
        """Bits of each value under this table, escapes with their explicit payload."""
        idx, escaped = self.index(values)
        out = -np.log2(self.probs[idx])
        if escaped.any():
            out[escaped] += escape_bits(values[escaped] - self.lo, self.size)
        return out


# ---------------------------------------------------------------------- real coding
def ans_code(streams: Sequence[tuple[Table, np.ndarray]]) -> np.ndarray:
    """ANS-code each (table, values) stream in order; the compressed uint32 words."""
    coder = constriction.stream.stack.AnsCoder()
    # An empty ANS stack has state 0, where pushing symbol 0 costs nothing: a trailing run of
    # 0s would be coded for free. A sentinel pushed first makes every later symbol pay.
    coder.encode_reverse(np.array([1], dtype=np.int32), constriction.stream.model.Uniform(2))
    for table, values in reversed(streams):  # a stack: the last pushed is decoded first
        idx, escaped = table.index(values)
        if escaped.any():
            encode_escapes(coder, values[escaped] - table.lo, table.size)
        if len(idx):
            coder.encode_reverse(idx.astype(np.int32), _model(table))
    return coder.get_compressed()


def ans_decode(words: np.ndarray, tables: Sequence[Table], lengths: Sequence[int]) -> list:
    """Invert ``ans_code``: the values of each stream, given its table and length."""
    coder = constriction.stream.stack.AnsCoder(np.asarray(words, dtype=np.uint32))
    out = []
    for table, n in zip(tables, lengths, strict=True):
        idx = coder.decode(_model(table), n).astype(np.int64) if n else np.zeros(0, np.int64)
        escaped = idx == table.size
        values = idx + table.lo
        if escaped.any():
            values[escaped] = decode_escapes(coder, int(escaped.sum()), table.size) + table.lo
        out.append(values)
    sentinel = coder.decode(constriction.stream.model.Uniform(2), 1)
    if sentinel[0] != 1 or not coder.is_empty():
        raise ValueError("compressed words do not match these tables and lengths")
    return out


def _model(table: Table) -> Any:
    return constriction.stream.model.Categorical(table.probs, perfect=False)


# ---------------------------------------------------------------------- the two codes
def _ranges(grid: MeaningGrid) -> list[tuple[int, int] | None]:
    """Fixed table range per column: the vocabulary for discrete ones, None for continuous."""
    return [(0, v - 1) if v else None for v in grid.vocab_sizes()]


def first_of_agent(agents: np.ndarray) -> np.ndarray:
    """Mask of each agent's first row; rows must hold each agent's states contiguously."""
    agents = np.asarray(agents)
    first = np.ones(len(agents), dtype=bool)
    first[1:] = agents[1:] != agents[:-1]
    if int(first.sum()) != len(np.unique(agents)):
        raise ValueError(
            "rows are not grouped by agent: sort states by (agent, step) before coding deltas"
        )
    return first


def deltas(grid: MeaningGrid, symbols: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per-column difference of each state from the previous row (first rows: unchanged)."""
    prev = np.roll(symbols, 1, axis=0)
    out = symbols - prev
    for i, v in enumerate(grid.vocab_sizes()):
        if v:  # categorical: difference mod vocabulary size; binary (v = 2): that is xor
            out[:, i] = np.mod(out[:, i], v)
    out[first] = symbols[first]
    return out


def _fit_tables(values: np.ndarray, ranges: list[tuple[int, int] | None]) -> list[Table]:
    return [
        Table.fit(values[:, i], *(r if r is not None else (None, None)))
        for i, r in enumerate(ranges)
    ]


def _measure(
    grid: MeaningGrid, streams: list[tuple[Table, np.ndarray]], n: int, drift: float
) -> dict[str, Any]:
    bits = [table.bits(values).sum() for table, values in streams]
    words = ans_code(streams)
    by_feature: dict[str, float] = {}
    names = grid.schema.names
    for j, b in enumerate(bits):
        name = names[j % len(names)]
        by_feature[name] = by_feature.get(name, 0.0) + float(b) / max(n, 1)
    return {
        "k": grid.k,
        "bits_per_state": float(sum(bits)) / max(n, 1),
        "coded_bits_per_state": 32.0 * len(words) / max(n, 1),
        "drift": drift,
        "bits_by_feature": by_feature,
    }


def _drift(schema: FeatureSchema, x: torch.Tensor, x_hat: torch.Tensor) -> float:
    metric = SemanticDrift(schema)
    metric.update(x, x_hat)
    return float(metric.compute()["drift"])


def baselines_of_splits(datamodule: Any, splits: Sequence[str]) -> dict[str, Any] | None:
    """Classical baselines of a DataModule's ``splits`` (rows concatenated), tables fitted on its
    training split; None when those splits hold no state."""
    x = torch.cat([getattr(datamodule, f"{s}_x") for s in splits])
    if not x.shape[0]:
        return None
    agents = np.concatenate([np.asarray(getattr(datamodule, f"{s}_agents")) for s in splits])
    return classical_baselines(
        datamodule.schema, datamodule.train_x, datamodule.train_agents, x, agents
    )


def classical_baselines(
    schema: FeatureSchema,
    train_x: torch.Tensor,
    train_agents: np.ndarray | torch.Tensor,
    eval_x: torch.Tensor,
    eval_agents: np.ndarray | torch.Tensor,
    ks: Sequence[float] = KS,
) -> dict[str, Any]:
    """Bits per state and drift of the quantizer and the per-agent delta code, for each k.

    Tables are fitted on ``train_x``; bits and drift are measured on ``eval_x``. Rows of each
    split must be in (agent, step) order (``*_agents``: each row's agent). JSON-able result.
    """
    train_agents, eval_agents = (np.asarray(a) for a in (train_agents, eval_agents))
    train_first, eval_first = first_of_agent(train_agents), first_of_agent(eval_agents)
    n = int(eval_x.shape[0])
    result: dict[str, Any] = {"num_states": n, "quantizer": [], "delta": []}
    for k in ks:
        grid = MeaningGrid(schema, k)
        ranges = _ranges(grid)
        train_s, eval_s = grid.encode(train_x), grid.encode(eval_x)
        drift = _drift(schema, eval_x, grid.decode(eval_s))
        tables = _fit_tables(train_s, ranges)
        cols = range(eval_s.shape[1])
        result["quantizer"].append(
            _measure(grid, [(tables[i], eval_s[:, i]) for i in cols], n, drift)
        )
        train_d = deltas(grid, train_s, train_first)[~train_first]
        delta_tables = _fit_tables(train_d, ranges)
        eval_d = deltas(grid, eval_s, eval_first)
        streams = [(tables[i], eval_d[eval_first, i]) for i in cols]
        streams += [(delta_tables[i], eval_d[~eval_first, i]) for i in cols]
        result["delta"].append(_measure(grid, streams, n, drift))
    return result


def classical_metrics(baselines: dict[str, Any], drift: float, bits: float) -> dict[str, float]:
    """Where a model at (``drift``, ``bits`` per state) stands against the classical codes.

    ``classical/quantizer_bits`` and ``classical/delta_bits``: the two codes at k = 1 (drift 0
    on the grid); ``classical/bits_at_drift``: the quantizer curve (k = 1..16) at the model's
    drift -- the fewest bits of a setting that loses no more, linear between settings (mixing
    two settings gets there), flat past the ends; ``bits_over_classical``: the model's bits minus
    that -- below 0 the learned code beats the classical one at equal drift.
    """
    best: dict[float, float] = {}
    for q in baselines["quantizer"]:
        best[q["drift"]] = min(q["bits_per_state"], best.get(q["drift"], np.inf))
    drifts = sorted(best)
    fewest = np.minimum.accumulate([best[d] for d in drifts])  # more drift never costs more
    at_drift = float(np.interp(drift, drifts, fewest))
    return {
        "classical/quantizer_bits": baselines["quantizer"][0]["bits_per_state"],
        "classical/delta_bits": baselines["delta"][0]["bits_per_state"],
        "classical/bits_at_drift": at_drift,
        "bits_over_classical": bits - at_drift,
    }


def describe(baselines: dict[str, Any]) -> str:
    """One line: the k = 1 quantizer and delta bits per state at their drift."""
    q, d = baselines["quantizer"][0], baselines["delta"][0]
    return (
        f"classical quantizer: {q['bits_per_state']:.1f} bits/state at drift {q['drift']:.3g}; "
        f"per-agent delta: {d['bits_per_state']:.1f} bits/state at drift {d['drift']:.3g}"
    )
