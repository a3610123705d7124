"""The columns of a chunk of ``agent_states`` that the learned model does not code.

Rows of a chunk are in (agent_id, step_number) order, so

- ``agent_id`` is runs: which agents (given the ids the caller already knows, normally the
  ``agents`` table restored before: a bitmap of those present when the runs are in sorted
  order, their positions otherwise, the ids themselves only when unknown) and run lengths;
- ``step_number`` is each run's first step, then +1 per row (the rows where it is not are
  listed);
- ``simulation_id`` is runs, coded like ``agent_id``;
- ``id`` is rebuilt as ``"<simulation_id>:<agent_id>-<step_number>"`` (AgentFarm's rule), the
  rows where that is not the stored value listed with their own;
- every other column (``position_z``, a constant ``starting_health``, the NULL masks of coded
  features) as a column of typed values (``conditioned``: a NULL or constant column is a few
  bytes).

The streams are packed like a table block (``block_io``, ``backend``), so decoding is bounded
the same way. ``encode_state_keys`` / ``decode_state_keys`` keep the signatures of
``columns.encode_columns`` / ``decode_columns`` plus the known values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from meaning_transform.codec.block_io import Sink, Source
from meaning_transform.codec.conditioned import put_column, take_column
from meaning_transform.codec.context import Context
from meaning_transform.codec.numbers import put_ints, take_ints
from meaning_transform.codec.typed import put_values, take_values

KEY_COLUMNS = ("agent_id", "step_number", "simulation_id", "id")
FORMAT = 1
MAX_ROWS = 1 << 24
_SORTED, _POSITIONS, _OWN = range(3)


def default_id(simulation_id: Any, agent_id: Any, step: Any) -> str:
    """AgentFarm's ``agent_states.id``."""
    return f"{simulation_id}:{agent_id}-{step}"


def _runs(values: Sequence[Any]) -> tuple[list[Any], np.ndarray]:
    """(run values, run lengths); values compared by type and value."""
    n = len(values)
    if not n:
        return [], np.zeros(0, dtype=np.int64)
    starts = [0] + [
        i
        for i in range(1, n)
        if type(values[i]) is not type(values[i - 1]) or values[i] != values[i - 1]
    ]
    lengths = np.diff(np.append(starts, n))
    return [values[i] for i in starts], lengths


def _put_runs(sink: Sink, values: Sequence[Any], known: Sequence[Any]) -> np.ndarray:
    """Run-length ``values`` given the ``known`` values (the caller wrote the run count);
    returns the order per-run numbers are written in (the known values' order when the runs
    are a sorted subset of them: agents by birth, so first steps grow)."""
    runs, lengths = _runs(values)
    where = {}
    for i, v in enumerate(known):
        where.setdefault((type(v), v), i)
    at = [where.get((type(v), v), -1) for v in runs]
    order = np.arange(len(runs))
    if runs and min(at) >= 0 and len(set(at)) == len(at) and _is_sorted(runs):
        sink.plan.uint(_SORTED)
        present = np.zeros(len(known), dtype=np.uint8)
        present[at] = 1
        sink.put(np.packbits(present).tobytes())
        order = np.argsort(at)
    elif runs and min(at) >= 0:
        sink.plan.uint(_POSITIONS)
        put_ints(sink, np.array(at, dtype=np.int64))
    else:
        sink.plan.uint(_OWN)
        put_values(sink, runs)
    put_ints(sink, lengths[order])
    return order


def _is_sorted(runs: list[Any]) -> bool:
    try:
        return all(a < b for a, b in zip(runs, runs[1:], strict=False))
    except TypeError:  # mixed types do not compare
        return False


def _take_runs(
    src: Source, n_runs: int, n: int, known: Sequence[Any]
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """(run values, run lengths, the order per-run numbers were written in)."""
    mode = src.plan.uint(_OWN, "a run coding")
    order = np.arange(n_runs)
    if mode == _SORTED:
        bits = src.take()
        if len(bits) != (len(known) + 7) // 8:
            raise src.fail("a run bitmap does not match the known values")
        present = np.flatnonzero(np.unpackbits(np.frombuffer(bits, np.uint8))[: len(known)])
        if len(present) != n_runs:
            raise src.fail("a run bitmap does not match the number of runs")
        listed = [known[i] for i in present.tolist()]
        try:
            order = np.array(sorted(range(n_runs), key=listed.__getitem__), dtype=np.int64)
        except TypeError:
            raise src.fail("the known values do not sort") from None
        runs = [listed[i] for i in order.tolist()]
        if not _is_sorted(runs):
            raise src.fail("a known value is listed twice")
        order = np.argsort(order)  # known position -> run number
    elif mode == _POSITIONS:
        at = take_ints(src, n_runs)
        if n_runs and (at.min() < 0 or at.max() >= len(known)):
            raise src.fail("a run refers to an unknown value")
        runs = [known[i] for i in at.tolist()]
    else:
        runs = take_values(src, n_runs)
    lengths = np.empty(n_runs, dtype=np.int64)
    lengths[order] = take_ints(src, n_runs)
    if n_runs and (lengths.min() < 1 or lengths.max() > n) or int(lengths.sum()) != n:
        raise src.fail("run lengths do not add up to the chunk's rows")
    return runs, lengths, order


def encode_state_keys(
    keys: Mapping[str, Sequence[Any]],
    others: Mapping[str, Sequence[Any]],
    known: Mapping[str, Sequence[Any]] | None = None,
) -> bytes:
    """A chunk's keys (the ``KEY_COLUMNS`` present; ``agent_id`` required) and other columns;
    ``known``: values of ``agent_id`` / ``simulation_id`` the decoder will know (the ids of
    the ``agents`` and ``simulations`` tables, in their rowid order)."""
    known = known or {}
    agents = list(keys["agent_id"])
    n = len(agents)
    sink = Sink()
    sink.plan.uint(FORMAT)
    sink.plan.uint(n)
    present = [c for c in KEY_COLUMNS if c in keys]
    sink.plan.uint(sum(1 << KEY_COLUMNS.index(c) for c in present))
    lengths = _runs(agents)[1]
    sink.plan.uint(len(lengths))
    order = _put_runs(sink, agents, known.get("agent_id", ()))
    if "step_number" in keys:
        _put_steps(sink, list(keys["step_number"]), lengths, order)
    if "simulation_id" in keys:
        sims = list(keys["simulation_id"])
        sink.plan.uint(len(_runs(sims)[0]))
        _put_runs(sink, sims, known.get("simulation_id", ()))
    if "id" in keys:
        sims = keys.get("simulation_id", [None] * n)
        steps = keys.get("step_number", [None] * n)
        ids = list(keys["id"])
        wrong = [i for i, v in enumerate(map(default_id, sims, agents, steps)) if ids[i] != v]
        sink.plan.uint(len(wrong))
        if wrong:
            put_ints(sink, np.array(wrong, dtype=np.int64))
            put_values(sink, [ids[i] for i in wrong])
    sink.plan.uint(len(others))
    context = Context(n)
    for name, values in others.items():
        sink.plan.text(name)
        put_column(sink, list(values), None, context)
    return sink.tobytes()


def _put_steps(sink: Sink, steps: list[Any], lengths: np.ndarray, order: np.ndarray) -> None:
    """Each run's first step (in ``order``), then the rows where a step is not the one
    before + 1."""
    if not all(type(s) is int for s in steps):
        sink.plan.uint(1)
        put_values(sink, steps)
        return
    sink.plan.uint(0)
    a = np.array(steps, dtype=np.int64)
    first = np.cumsum(np.append(0, lengths[:-1]))
    put_ints(sink, a[first][order])
    expected = _expected_steps(a[first], lengths)
    wrong = np.flatnonzero(a != expected)
    sink.plan.uint(len(wrong))
    if len(wrong):
        put_ints(sink, wrong)
        put_ints(sink, a[wrong])


def _expected_steps(first_steps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    run = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(np.append(0, lengths[:-1]))
    return first_steps[run] + (np.arange(int(lengths.sum())) - starts[run])


def decode_state_keys(
    blob: bytes, n: int, known: Mapping[str, Sequence[Any]] | None = None, where: str = "chunk"
) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Inverse of ``encode_state_keys`` for a chunk of ``n`` rows: (keys, other columns);
    ``BlockError`` (one line) if the bytes are not such a chunk."""
    known = known or {}
    src = Source(blob, where)
    plan = src.plan
    if plan.uint(FORMAT, "the keys format") != FORMAT:
        raise src.fail(f"keys format is not {FORMAT}")
    if plan.uint(MAX_ROWS, "the number of rows") != n:
        raise src.fail(f"its keys are not for {n} rows")
    src.count(n * len(KEY_COLUMNS))
    mask = plan.uint((1 << len(KEY_COLUMNS)) - 1, "the key columns")
    present = [c for i, c in enumerate(KEY_COLUMNS) if mask >> i & 1]
    if "agent_id" not in present:
        raise src.fail("it has no agent_id")
    n_runs = plan.uint(n, "the number of agents")
    runs, lengths, order = _take_runs(src, n_runs, n, known.get("agent_id", ()))
    keys: dict[str, list[Any]] = {"agent_id": _unruns(runs, lengths)}
    if "step_number" in present:
        keys["step_number"] = _take_steps(src, lengths, order, n)
    if "simulation_id" in present:
        m = plan.uint(n, "the number of simulation runs")
        sims, sim_lengths, _ = _take_runs(src, m, n, known.get("simulation_id", ()))
        keys["simulation_id"] = _unruns(sims, sim_lengths)
    if "id" in present:
        sims = keys.get("simulation_id", [None] * n)
        steps = keys.get("step_number", [None] * n)
        ids = list(map(default_id, sims, keys["agent_id"], steps))
        m = plan.uint(n, "the number of irregular ids")
        if m:
            rows = take_ints(src, m)
            if rows.min() < 0 or rows.max() >= n:
                raise src.fail("an id's row is out of range")
            for i, v in zip(rows.tolist(), take_values(src, m), strict=True):
                ids[i] = v
        keys["id"] = ids
    others: dict[str, list[Any]] = {}
    context = Context(n)
    for _ in range(plan.uint(1 << 12, "the number of other columns")):
        name = plan.text(1 << 12, "a column name")
        others[name] = take_column(src, n, context)
    src.end()
    return keys, others


def _unruns(values: list[Any], lengths: np.ndarray) -> list[Any]:
    out: list[Any] = []
    for v, k in zip(values, lengths.tolist(), strict=True):
        out.extend([v] * k)
    return out


def _take_steps(src: Source, lengths: np.ndarray, order: np.ndarray, n: int) -> list[Any]:
    if src.plan.uint(1, "a step coding"):
        return take_values(src, n)
    first = np.empty(len(lengths), dtype=np.int64)
    first[order] = take_ints(src, len(lengths))
    steps = _expected_steps(first, lengths)
    m = src.plan.uint(n, "the number of irregular steps")
    if m:
        rows = take_ints(src, m)
        if rows.min() < 0 or rows.max() >= n:
            raise src.fail("a step's row is out of range")
        steps[rows] = take_ints(src, m)
    return steps.tolist()
