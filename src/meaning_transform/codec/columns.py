"""Lossless coding of the columns the model does not code: keys and other columns, per chunk.

Rows of a chunk are in (agent_id, step_number) order, so

- ``agent_id`` and ``simulation_id`` are runs: the run values and run lengths;
- ``step_number`` is each agent run's first step and then differences (almost all 1);
- ``id`` is rebuilt as ``"<simulation_id>:<agent_id>-<step_number>"`` (AgentFarm's rule); the
  rows where that is not the stored value keep theirs as exceptions;
- any other column (``position_z``, a constant ``starting_health``, NULL masks of coded
  features) is stored value by value with its SQLite type (NULL, integer, real, text, blob).

Everything is packed into one zlib stream (level 9): long runs of 1s and of one constant value
cost a few bytes. The bytes are counted in the file size like the model's.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from meaning_transform.codec.bounded import CodecFileError, field, inflate
from meaning_transform.errors import DataError

#: what a chunk's key and other columns may inflate to
MAX_COLUMN_BYTES = 256 << 20

KEY_COLUMNS = ("agent_id", "step_number", "simulation_id", "id")
_NULL, _INT, _REAL, _TEXT, _BLOB = range(5)


def runs(values: Sequence[Any]) -> tuple[list[Any], np.ndarray]:
    """Run-length form of ``values``: (run values, run lengths)."""
    n = len(values)
    if n == 0:
        return [], np.zeros(0, dtype=np.int64)
    a = _objects(values)
    starts = np.append(0, np.flatnonzero(a[1:] != a[:-1]) + 1)
    lengths = np.diff(np.append(starts, n))
    return a[starts].tolist(), lengths


def _objects(values: Sequence[Any]) -> np.ndarray:
    """``values`` as a 1-d object array (elementwise ``==``/``!=`` as Python's)."""
    a = np.empty(len(values), dtype=object)
    a[:] = values
    return a


def unruns(values: Sequence[Any], lengths: np.ndarray) -> list[Any]:
    """Inverse of ``runs``."""
    out: list[Any] = []
    for v, n in zip(values, lengths.tolist(), strict=True):
        out.extend([v] * n)
    return out


def default_id(simulation_id: Any, agent_id: Any, step: Any) -> str:
    """AgentFarm's ``agent_states.id``."""
    return f"{simulation_id}:{agent_id}-{step}"


def _typed(values: Sequence[Any]) -> dict[str, Any]:
    """Any SQLite values -> type tags, int64 ints, float64 reals, texts and blobs."""
    kinds = set(map(type, values))
    if kinds <= {type(None), float}:  # the common columns (all NULL, all REAL): vectorized
        reals = np.array(values, dtype=np.float64)  # None -> NaN (SQLite stores no NaN)
        null = np.isnan(reals)
        return {
            "tags": np.where(null, _NULL, _REAL).astype(np.uint8),
            "ints": np.zeros(0, dtype=np.int64),
            "reals": reals[~null],
            "texts": [],
            "blobs": [],
        }
    if kinds == {int}:  # steps, integer columns: vectorized (values beyond int64 below)
        try:
            ints_only = np.array(values, dtype=np.int64)
        except OverflowError:
            pass
        else:
            return {
                "tags": np.full(len(values), _INT, dtype=np.uint8),
                "ints": ints_only,
                "reals": np.zeros(0, dtype=np.float64),
                "texts": [],
                "blobs": [],
            }
    tags = np.empty(len(values), dtype=np.uint8)
    ints, reals, texts, blobs = [], [], [], []
    for i, v in enumerate(values):
        if v is None:
            tags[i] = _NULL
        elif isinstance(v, bool | int):
            if not -(2**63) <= v < 2**63:
                raise DataError(f"integer {v} does not fit in 64 bits")
            tags[i] = _INT
            ints.append(int(v))
        elif isinstance(v, float):
            tags[i] = _REAL
            reals.append(v)
        elif isinstance(v, str):
            tags[i] = _TEXT
            texts.append(v)
        else:
            tags[i] = _BLOB
            blobs.append(bytes(v).hex())
    return {
        "tags": tags,
        "ints": np.array(ints, dtype=np.int64),
        "reals": np.array(reals, dtype=np.float64),
        "texts": texts,
        "blobs": blobs,
    }


def _untyped(d: dict[str, Any]) -> list[Any]:
    tags = d["tags"]
    if not len(d["ints"]) and not d["texts"] and not d["blobs"]:  # all NULL/REAL: vectorized
        values = np.full(len(tags), None, dtype=object)
        values[tags == _REAL] = d["reals"].tolist()
        return values.tolist()
    out: list[Any] = [None] * len(tags)
    sources = {
        _INT: iter(d["ints"].tolist()),
        _REAL: iter(d["reals"].tolist()),
        _TEXT: iter(d["texts"]),
        _BLOB: (bytes.fromhex(b) for b in d["blobs"]),
    }
    for i, t in enumerate(tags.tolist()):
        if t != _NULL:
            out[i] = next(sources[t])
    return out


class _Packer:
    """Named numpy arrays and JSON values -> one zlib-compressed byte string (and back)."""

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.arrays: list[tuple[str, np.ndarray]] = []

    def array(self, name: str, a: np.ndarray) -> None:
        self.arrays.append((name, np.ascontiguousarray(a)))

    def typed(self, name: str, values: Sequence[Any]) -> None:
        d = _typed(values)
        self.meta[name] = {"texts": d["texts"], "blobs": d["blobs"]}
        for part in ("tags", "ints", "reals"):
            self.array(f"{name}.{part}", d[part])

    def tobytes(self) -> bytes:
        layout = [[name, a.dtype.str, len(a)] for name, a in self.arrays]
        head = json.dumps({"meta": self.meta, "arrays": layout}).encode()
        body = b"".join(a.tobytes() for _, a in self.arrays)
        return zlib.compress(struct.pack("<I", len(head)) + head + body, 9)


#: the array types a columns blob may hold
_DTYPES = {"|u1", "<i8", "<f8"}


def _unpack(blob: bytes, n: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inverse of ``_Packer.tobytes`` for a chunk of ``n`` rows; every field of the blob is
    checked before use (CodecFileError), and it inflates to at most MAX_COLUMN_BYTES."""
    raw = inflate(blob, MAX_COLUMN_BYTES, "key columns")
    if len(raw) < 4:
        raise CodecFileError("key columns are too short")
    (size,) = struct.unpack_from("<I", raw)
    if size > len(raw) - 4:
        raise CodecFileError("key columns: layout length past the end")
    try:
        head = json.loads(raw[4 : 4 + size])
    except (ValueError, RecursionError) as e:
        raise CodecFileError(f"key columns: layout cannot be read ({e})") from None
    meta = field(head, "meta", dict, "key columns")
    layout = field(head, "arrays", list, "key columns")
    arrays, offset = {}, 4 + size
    for entry in layout:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and entry[1] in _DTYPES
            and isinstance(entry[2], int)
            and 0 <= entry[2] <= len(raw)
        ):
            raise CodecFileError("key columns: an array entry is malformed")
        name, dtype, length = entry
        dt = np.dtype(dtype)
        if offset + dt.itemsize * length > len(raw):
            raise CodecFileError(f"key columns: array {name[:40]!r} is past the end")
        arrays[name] = np.frombuffer(raw, dtype=dt, count=length, offset=offset)
        offset += dt.itemsize * length
    return meta, arrays


def encode_columns(keys: dict[str, Sequence[Any]], others: dict[str, Sequence[Any]]) -> bytes:
    """Keys (``KEY_COLUMNS`` present in the table) and other columns -> bytes."""
    p = _Packer()
    agents = keys["agent_id"]
    agent_runs, lengths = runs(agents)
    p.typed("agent_runs", agent_runs)
    p.array("agent_lengths", lengths)
    if "step_number" in keys:
        p.typed("steps", _step_deltas(keys["step_number"], lengths))
    if "simulation_id" in keys:
        sim_runs, sim_lengths = runs(keys["simulation_id"])
        p.typed("sim_runs", sim_runs)
        p.array("sim_lengths", sim_lengths)
    if "id" in keys:
        sims = keys.get("simulation_id", [None] * len(agents))
        steps = keys.get("step_number", [None] * len(agents))
        ids = keys["id"]
        expected = _objects(list(map(default_id, sims, agents, steps)))
        rows = np.flatnonzero(_objects(ids) != expected)
        p.array("id_rows", rows.astype(np.int64))
        p.typed("id_values", [ids[i] for i in rows.tolist()])
    p.meta["others"] = list(others)
    for name, values in others.items():
        p.typed(f"col:{name}", values)
    return p.tobytes()


def _step_deltas(steps: Sequence[Any], lengths: np.ndarray) -> list[Any]:
    """Steps with each run's later rows as differences from the row before (ints only)."""
    out = list(steps)
    ints = set(map(type, steps)) <= {int}
    if not ints:
        return out  # stored as they are (typed), rare
    a = np.asarray(steps, dtype=np.int64)
    d = np.diff(a, prepend=0)
    first = np.cumsum(np.append(0, lengths[:-1]))
    d[first] = a[first]
    return d.tolist()


def decode_columns(blob: bytes, n: int) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Inverse of ``encode_columns`` for a chunk of ``n`` rows: (keys, other columns);
    CodecFileError for a blob that does not hold exactly that."""
    meta, arrays = _unpack(blob, n)

    def array(name: str) -> np.ndarray:
        if name not in arrays:
            raise CodecFileError(f"key columns: array {name!r} is missing")
        return arrays[name]

    def typed(name: str) -> list[Any]:
        entry = field(meta, name, dict, "key columns")
        texts = field(entry, "texts", list, f"key columns {name}")
        blobs = field(entry, "blobs", list, f"key columns {name}")
        if not all(isinstance(t, str) for t in texts + blobs):
            raise CodecFileError(f"key columns {name}: texts must be strings")
        tags = array(f"{name}.tags")
        d = {"texts": texts, "blobs": blobs, "tags": tags}
        d.update({part: array(f"{name}.{part}") for part in ("ints", "reals")})
        counts = [int((tags == t).sum()) for t in (_INT, _REAL, _TEXT, _BLOB)]
        sizes = [len(d["ints"]), len(d["reals"]), len(texts), len(blobs)]
        if counts != sizes or (tags > _BLOB).any():
            raise CodecFileError(f"key columns {name}: tags do not match the values")
        try:
            return _untyped(d)
        except ValueError as e:  # a blob that is not hex
            raise CodecFileError(f"key columns {name}: {e}") from None

    lengths = _lengths(array("agent_lengths"), n, "agent_lengths")
    agent_runs = typed("agent_runs")
    if len(agent_runs) != len(lengths):
        raise CodecFileError("key columns: agent runs and lengths differ in number")
    keys: dict[str, list[Any]] = {"agent_id": unruns(agent_runs, lengths)}
    if "steps.tags" in arrays:
        steps = typed("steps")
        if all(isinstance(s, int) for s in steps) and len(steps) == n and steps:
            a = np.asarray(steps, dtype=np.int64)
            first = np.cumsum(np.append(0, lengths[:-1]))
            # each run: cumulative sum from its first step
            run_id = np.repeat(np.arange(len(lengths)), lengths)
            csum = np.cumsum(a)
            base = csum[first] - a[first]
            steps = (csum - base[run_id]).tolist()
        keys["step_number"] = steps
    if "sim_lengths" in arrays:
        sim_lengths = _lengths(arrays["sim_lengths"], n, "sim_lengths")
        sim_runs = typed("sim_runs")
        if len(sim_runs) != len(sim_lengths):
            raise CodecFileError("key columns: simulation runs and lengths differ in number")
        keys["simulation_id"] = unruns(sim_runs, sim_lengths)
    if "id_rows" in arrays:
        sims = keys.get("simulation_id", [None] * n)
        steps = keys.get("step_number", [None] * n)
        agents = keys["agent_id"]
        ids = list(map(default_id, sims, agents, steps))
        rows = arrays["id_rows"]
        values = typed("id_values")
        if len(rows) != len(values) or (len(rows) and (rows.min() < 0 or rows.max() >= n)):
            raise CodecFileError("key columns: id exceptions are out of range")
        for i, v in zip(rows.tolist(), values, strict=True):
            ids[i] = v
        keys["id"] = ids
    others_names = field(meta, "others", list, "key columns")
    if not all(isinstance(c, str) for c in others_names):
        raise CodecFileError("key columns: other column names are not strings")
    others = {name: typed(f"col:{name}") for name in others_names}
    if any(len(v) != n for v in [*keys.values(), *others.values()]):
        raise CodecFileError("key columns do not have the chunk's row count")
    return keys, others


def _lengths(a: np.ndarray, n: int, what: str) -> np.ndarray:
    """Run lengths that are positive and add up to ``n`` (checked before anything expands)."""
    if a.dtype != np.int64 or (len(a) and (a.min() < 1 or a.max() > n)) or int(a.sum()) != n:
        raise CodecFileError(f"key columns: {what} do not add up to the chunk's {n} rows")
    return a
