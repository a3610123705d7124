"""The rows the anchors code (``benchmarks/anchors.py``), how their decodes are checked, and
the layouts they are coded in.

``StateRows``: the agent_states rows of a set-up datamodule, as the codec codes them: (agent,
step) order, grid symbols of the meaning grid at k = 1 of the fitted schema, native values,
agent ids and steps. Checks raise ``CheckFailed``: ``check_equal`` (exact round trip),
``check_within`` (continuous values within tolerance, with the slack ``verify`` allows; binary
and categorical exact), ``check_grid`` (grid symbols exact, then their values within
tolerance). Layouts: ``grid`` (the symbols as they are) and ``deltas`` (per agent: the first
state absolute, then the difference from the agent's previous state; binary/categorical columns
mod their vocabulary, as ``baselines.deltas``).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard

from meaning_transform.baselines import deltas, first_of_agent
from meaning_transform.grid import MeaningGrid
from meaning_transform.messages import one_line
from meaning_transform.metrics import TOLERANCE_SLACK
from meaning_transform.schema import table as schema_table
from meaning_transform.schema.layout import SchemaLayout

sys.path.insert(0, str(Path(__file__).resolve().parent))
from db_anchors import ZSTD_LEVEL  # noqa: E402  (one level for every zstd -19 anchor)

LAYOUTS = ("grid", "deltas")


class AnchorSkipped(Exception):
    """An anchor's package is not installed (or does not work here): one line saying which."""


class CheckFailed(AssertionError):
    """A decoded array differs from the original beyond what the anchor promises."""


# ---------------------------------------------------------------------- the rows
@dataclass(frozen=True)
class StateRows:
    """agent_states rows as the codec codes them, in (agent, step) order."""

    grid: MeaningGrid  # the meaning grid at k = 1 of the fitted schema
    x: torch.Tensor  # float32 data tensor [N, F]
    symbols: np.ndarray  # int64 [N, F]: grid symbols
    native: np.ndarray  # float64 [N, F]: values in native units (codes for discrete ones)
    agent_ids: np.ndarray  # object [N]: agent_id text
    steps: np.ndarray  # int64 [N]: step_number

    @property
    def n(self) -> int:
        """Number of states."""
        return len(self.steps)

    @property
    def names(self) -> list[str]:
        """Feature names, in column order."""
        return [f.name for f in self.grid.schema.features]

    @property
    def continuous(self) -> np.ndarray:
        """Per column, whether it is continuous (else binary/categorical: exact)."""
        return np.array([f.kind == "continuous" for f in self.grid.schema.features])

    @property
    def tolerances(self) -> np.ndarray:
        """Per column, the tolerance in native units (0 for exact columns)."""
        return np.array(
            [f.tolerance if f.kind == "continuous" else 0.0 for f in self.grid.schema.features]
        )

    def vocab_sizes(self) -> list[int]:
        """Per column, the vocabulary size of discrete columns, 0 for continuous ones."""
        return self.grid.vocab_sizes()


def state_rows(dm: Any, split: str | None = None) -> StateRows:
    """The rows of a set-up datamodule's ``split`` (None: every split) in (agent, step) order."""
    splits = [split] if split else ["train", "val", "test"]
    ids: dict[int, Any] = {}  # agent code -> agent_id text
    for s in splits:
        codes = np.unique(getattr(dm, f"{s}_agents"))
        names = dm.split_agents[s]
        if len(codes) != len(names):
            raise ValueError(f"split {s!r}: {len(codes)} agents with rows, {len(names)} listed")
        ids.update(zip(codes.tolist(), names.tolist(), strict=True))
    x = torch.cat([getattr(dm, f"{s}_x") for s in splits])
    agents = np.concatenate([getattr(dm, f"{s}_agents") for s in splits])
    steps = np.concatenate([getattr(dm, f"{s}_steps") for s in splits])
    order = np.lexsort((steps, agents))
    x, agents, steps = x[torch.from_numpy(order)], agents[order], steps[order]
    grid = MeaningGrid(dm.schema, 1)
    agent_ids = np.empty(len(agents), dtype=object)
    agent_ids[:] = [ids[a] for a in agents.tolist()]
    return StateRows(grid, x, grid.encode(x), native_values(grid, x), agent_ids, steps)


def native_values(grid: MeaningGrid, x: torch.Tensor) -> np.ndarray:
    """Data tensor -> float64 [N, F]: continuous columns in native units (``schema.table.decode``),
    binary/categorical columns as their codes."""
    table = schema_table.decode(grid.schema, x)
    out = x.to(torch.float64).numpy().copy()
    for i, f in enumerate(grid.schema.features):
        if f.kind == "continuous":
            out[:, i] = table[f.name]
    return out


def data_tensor(rows: StateRows, native: np.ndarray) -> torch.Tensor:
    """Inverse of ``native_values`` (``schema.table.encode``), for decoded values."""
    table: dict[str, np.ndarray] = {}
    for i, f in enumerate(rows.grid.schema.features):
        col = np.asarray(native[:, i], dtype=np.float64)
        if f.kind == "binary":
            col = col.astype(bool)
        elif f.kind == "categorical":
            col = np.asarray(f.categories, dtype=object)[col.astype(np.int64)]
        table[f.name] = col
    return schema_table.encode(rows.grid.schema, table, valid=True)


# ---------------------------------------------------------------------- checks
def check_equal(original: np.ndarray, decoded: np.ndarray, what: str) -> None:
    """CheckFailed unless ``decoded`` holds exactly ``original``'s values (and shape)."""
    decoded = np.asarray(decoded)
    if decoded.shape != original.shape:
        raise CheckFailed(f"{what}: decoded shape {decoded.shape}, expected {original.shape}")
    if not np.array_equal(decoded, original):
        wrong = np.flatnonzero(np.asarray(decoded != original).reshape(len(original), -1).any(1))
        raise CheckFailed(f"{what}: {len(wrong)} rows differ, first at row {int(wrong[0])}")


def column_errors(rows: StateRows, j: int, decoded: np.ndarray) -> tuple[int, float]:
    """Column ``j`` decoded (native units): (values beyond tolerance, or not exact for a
    binary/categorical column; the worst error in tolerances, 0 for exact columns)."""
    decoded = np.asarray(decoded, dtype=np.float64)
    if decoded.shape != (rows.n,):
        return rows.n, float("inf")
    if not rows.continuous[j]:
        return int((decoded != rows.native[:, j]).sum()), 0.0
    err = np.abs(decoded - rows.native[:, j]) / rows.tolerances[j]
    bad = ~(err <= 1 + TOLERANCE_SLACK)  # NaN counts as bad
    return int(bad.sum()), float(np.nanmax(err, initial=0.0))


def check_within(rows: StateRows, decoded: np.ndarray, what: str) -> float:
    """CheckFailed unless every continuous value of ``decoded`` (native units, [N, F]) is
    within its tolerance of the original (the slack ``verify`` allows) and every other value
    exact; the worst error in tolerances."""
    decoded = np.asarray(decoded, dtype=np.float64)
    if decoded.shape != rows.native.shape:
        raise CheckFailed(f"{what}: decoded shape {decoded.shape}, expected {rows.native.shape}")
    worst = 0.0
    for j, name in enumerate(rows.names):
        bad, err = column_errors(rows, j, decoded[:, j])
        if bad:
            how = f"up to {err:.4g} tolerances" if rows.continuous[j] else "not exact"
            raise CheckFailed(f"{what}: {bad} values of {name} wrong ({how})")
        worst = max(worst, err)
    return worst


def check_grid(rows: StateRows, symbols: np.ndarray, what: str) -> float:
    """Decoded grid symbols: exactly the originals, and their values within tolerance."""
    check_equal(rows.symbols, symbols, what)
    return check_within(rows, rows.grid.native(symbols), what)


def predicate_mismatches(rows: StateRows, decoded: np.ndarray) -> int:
    """How many predicate truths differ between the original and decoded states."""
    schema = rows.grid.schema
    if not schema.predicates:
        return 0
    layout = SchemaLayout(schema)
    x_hat = data_tensor(rows, decoded)
    a, b = layout.evaluate_predicates(rows.x), layout.evaluate_predicates(x_hat)
    return int((a != b).sum())


# ---------------------------------------------------------------------- layouts
def agent_deltas(rows: StateRows, symbols: np.ndarray) -> np.ndarray:
    """Per-agent differences of grid symbols (first state of each agent absolute)."""
    return deltas(rows.grid, symbols, first_of_agent(rows.agent_ids))


def undo_agent_deltas(rows: StateRows, values: np.ndarray) -> np.ndarray:
    """Inverse of ``agent_deltas``: per-agent running sums (mod the vocabulary when discrete)."""
    first = first_of_agent(rows.agent_ids)
    total = np.cumsum(values, axis=0)
    starts = np.flatnonzero(first)
    before = np.zeros((len(starts), values.shape[1]), dtype=total.dtype)
    before[1:] = total[starts[1:] - 1]
    out = total - np.repeat(before, np.diff(np.append(starts, len(values))), axis=0)
    for i, v in enumerate(rows.vocab_sizes()):
        if v:
            out[:, i] = np.mod(out[:, i], v)
    return out


def layout_of(rows: StateRows, layout: str) -> np.ndarray:
    """The symbols in ``layout`` (``grid`` or ``deltas``)."""
    return rows.symbols if layout == "grid" else agent_deltas(rows, rows.symbols)


def from_layout(rows: StateRows, layout: str, values: np.ndarray) -> np.ndarray:
    """Inverse of ``layout_of``."""
    return values if layout == "grid" else undo_agent_deltas(rows, values)


def smallest_int(col: np.ndarray) -> np.ndarray:
    """``col`` (integers) as the smallest signed integer type that holds it, contiguous."""
    lo, hi = (int(col.min()), int(col.max())) if len(col) else (0, 0)
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.ascontiguousarray(col, dtype=dtype)
    raise ValueError("values beyond int64")


def zstd_bytes(data: bytes) -> bytes:
    """``data`` under zstd -19."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)


def unzstd(blob: bytes, size: int) -> bytes:
    """Inverse of ``zstd_bytes``, at most ``size`` bytes out."""
    return zstandard.ZstdDecompressor().decompress(blob, max_output_size=size)


def measured(rows: StateRows, nbytes: int, c_s: float, d_s: float, **extra: Any) -> dict[str, Any]:
    """An anchor's result: bytes, bits per state, seconds to compress and decompress, extras."""
    return {
        "bytes": nbytes,
        "bits_per_state": 8 * nbytes / rows.n,
        "compress_seconds": c_s,
        "decompress_seconds": d_s,
        **extra,
    }


def require(name: str) -> Any:
    """Import an anchor's package, or AnchorSkipped saying it is missing."""
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001  (a broken install is as missing as an absent one)
        raise AnchorSkipped(
            f"{name} not importable ({type(e).__name__}: {one_line(e)}); pip install -e .[bench]"
        ) from None
