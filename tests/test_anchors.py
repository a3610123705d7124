"""The codec benchmark's anchors (benchmarks/anchors.py, db_anchors.py) and our codec's rows
(codec_file.py) on a tiny database.

Each anchor whose package is missing (the ``bench`` extra) is skipped. The checks must fail on
a wrong decode: a corrupted array fed to the checkers, and a corrupted stream inside an anchor.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import sys
import zlib
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from agentfarm_db import write_agentfarm_db
from conftest import REPO

from meaning_transform.api import load_config
from meaning_transform.codec.container import Reader
from meaning_transform.config import instantiate_checked

sys.path.insert(0, str(REPO / "benchmarks"))
import anchor_rows as ar  # noqa: E402
import anchors  # noqa: E402
import codec_file  # noqa: E402
import db_anchors  # noqa: E402

PACKAGES = {"openzl": "openzl.ext", "sz3": "numcodecs_wasm_sz3", "pcodec": "pcodec", "zfp": "zfpy"}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny AgentFarm database (agent_states and agents)."""
    path = tmp_path_factory.mktemp("anchors") / "tiny.db"
    write_agentfarm_db(path, 600, num_agents=12)
    return path


@pytest.fixture(scope="module")
def rows(db: Path) -> ar.StateRows:
    """Every agent's rows, as the codec's datamodule reads them."""
    cfg = load_config(["data=sqlite", f"data.path={db}"])
    dm = instantiate_checked(cfg.data, "data", schema=cfg.schema)
    dm.setup()
    return ar.state_rows(dm)


def _hand_rows(rows: ar.StateRows, agents: list[str], steps: list[int]) -> ar.StateRows:
    """The first len(agents) rows of ``rows`` relabelled with ``agents`` and ``steps``."""
    n = len(agents)
    ids = np.empty(n, dtype=object)
    ids[:] = agents
    return dataclasses.replace(
        rows,
        x=rows.x[:n],
        symbols=rows.symbols[:n].copy(),
        native=rows.native[:n].copy(),
        agent_ids=ids,
        steps=np.array(steps, dtype=np.int64),
    )


# ---------------------------------------------------------------------- units
def test_rows_are_in_agent_step_order(rows: ar.StateRows) -> None:
    assert rows.n == 600
    key = list(zip(rows.agent_ids.tolist(), rows.steps.tolist(), strict=True))
    assert key == sorted(key)
    assert rows.symbols.shape == rows.native.shape == (600, len(rows.names))


def test_agent_deltas_by_hand(rows: ar.StateRows) -> None:
    hand = _hand_rows(rows, ["a", "a", "a", "b", "b"], [0, 1, 2, 0, 1])
    cont = rows.names.index("position_x")
    binary = rows.names.index("is_defending")
    hand.symbols[:, cont] = [3, 4, 4, 7, 6]
    hand.symbols[:, binary] = [1, 0, 0, 1, 1]
    d = ar.agent_deltas(hand, hand.symbols)
    assert d[:, cont].tolist() == [3, 1, 0, 7, -1]  # first of each agent absolute
    assert d[:, binary].tolist() == [1, 1, 0, 1, 0]  # binary: difference mod 2
    assert np.array_equal(ar.undo_agent_deltas(hand, d), hand.symbols)


def test_smallest_int() -> None:
    assert ar.smallest_int(np.array([-128, 127])).dtype == np.int8
    assert ar.smallest_int(np.array([0, 128])).dtype == np.int16
    assert ar.smallest_int(np.array([-40000, 0])).dtype == np.int32
    assert ar.smallest_int(np.array([2**40])).dtype == np.int64


def test_keys_round_trip_with_a_gap(rows: ar.StateRows) -> None:
    hand = _hand_rows(rows, ["a", "a", "b", "b", "b"], [5, 6, 0, 1, 3])
    out = anchors.keys_anchor(hand)
    assert out["agents"] == 2 and out["rows_not_consecutive"] == 1  # step 3 after 1
    assert 0 < out["without_ids_bytes"] < out["bytes"]


def test_check_within_fails_on_a_wrong_decode(rows: ar.StateRows) -> None:
    assert ar.check_within(rows, rows.native, "same") == 0.0
    j = rows.names.index("current_health")
    tol = rows.tolerances[j]
    inside = rows.native.copy()
    inside[7, j] += tol  # exactly one tolerance off: within
    assert ar.check_within(rows, inside, "edge") == pytest.approx(1.0)
    outside = rows.native.copy()
    outside[7, j] += 1.01 * tol
    with pytest.raises(ar.CheckFailed, match="current_health"):
        ar.check_within(rows, outside, "off")
    flipped = rows.native.copy()
    k = rows.names.index("is_defending")
    flipped[3, k] = 1 - flipped[3, k]  # an exact column off by one code
    with pytest.raises(ar.CheckFailed, match="is_defending"):
        ar.check_within(rows, flipped, "flip")
    with pytest.raises(ar.CheckFailed, match="shape"):
        ar.check_within(rows, rows.native[:-1], "short")


def test_native_values_and_predicates(rows: ar.StateRows) -> None:
    assert np.array_equal(ar.data_tensor(rows, rows.native).numpy(), rows.x.numpy())
    assert ar.predicate_mismatches(rows, rows.native) == 0
    j = rows.names.index("current_health")
    i = int(np.argmax(rows.native[:, j] >= 80.5))  # low_health (< 80) false here
    moved = rows.native.copy()
    moved[i, j] = 79.0  # below the low_health threshold (< 80): that predicate flips
    assert ar.predicate_mismatches(rows, moved) == 1


def test_check_grid_fails_on_a_wrong_symbol(rows: ar.StateRows) -> None:
    assert ar.check_grid(rows, rows.symbols, "same") <= 1.0 + 1e-4
    wrong = rows.symbols.copy()
    wrong[11, 0] += 1
    with pytest.raises(ar.CheckFailed, match="1 rows differ, first at row 11"):
        ar.check_grid(rows, wrong, "wrong")


def test_a_corrupted_stream_inside_an_anchor_is_caught(
    rows: ar.StateRows, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = anchors.unzstd

    def corrupt(blob: bytes, size: int) -> bytes:
        raw = bytearray(real(blob, size))
        raw[5] ^= 1
        return bytes(raw)

    monkeypatch.setattr(anchors, "unzstd", corrupt)
    with pytest.raises(ar.CheckFailed):
        anchors.zstd_grid_anchor(rows)


def test_bounded_coders_pick_only_checked_settings(rows: ar.StateRows) -> None:
    exact = (lambda col: col.tobytes(), lambda blob: np.frombuffer(blob, np.float64))
    tol = rows.tolerances

    def off(j: int) -> anchors.Coder:  # small bytes, decode 1.5 tolerances off (or a code off)
        shift = 1.5 * tol[j] if rows.continuous[j] else 1.0
        return (lambda col: b"x", lambda blob: rows.native[:, j] + shift)

    coders = [{"exact": exact, "off": off(j)} for j in range(len(rows.names))]
    out = anchors._bounded_rows(rows, "test", coders)
    assert {c["setting"] for c in out["columns"].values()} == {"exact"}
    assert out["bytes"] == rows.native.nbytes and out["predicate_mismatches"] == 0
    with pytest.raises(ar.CheckFailed, match="no setting keeps"):
        anchors._bounded_rows(rows, "test", [{"off": off(j)} for j in range(len(rows.names))])


def test_missing_package_is_one_line(rows: ar.StateRows, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ar.AnchorSkipped, match="not importable"):
        ar.require("no_such_package_for_anchors")

    def missing(_: ar.StateRows) -> dict:
        ar.require("no_such_package_for_anchors")
        return {}

    monkeypatch.setattr(anchors, "ANCHORS", {"gone": missing, "keys": anchors.keys_anchor})
    said: list[str] = []
    out = anchors.measure_anchors(rows, said.append)
    assert "not importable" in out["gone"]["skipped"] and len(said) == 1
    assert out["keys"]["bits_per_state"] > 0


# ---------------------------------------------------------------------- every anchor
@pytest.mark.parametrize("name", list(anchors.ANCHORS))
def test_anchor_codes_and_checks(rows: ar.StateRows, name: str) -> None:
    if name in PACKAGES:
        pytest.importorskip(PACKAGES[name])
    out = anchors.ANCHORS[name](rows)
    results = (
        [out] if "bits_per_state" in out else [v for k, v in out.items() if k != "bytes_alone"]
    )
    assert results
    for r in results:
        assert r["bytes"] > 0 and r["bits_per_state"] == 8 * r["bytes"] / rows.n
        assert r["compress_seconds"] > 0 and r["decompress_seconds"] > 0
        assert r.get("max_error_in_tolerances", 0.0) <= 1.0 + 1e-4
    if name == "openzl":  # per column never worse than one graph for all (one frame each)
        assert out["deltas_per_column"]["bytes"] <= out["deltas_best_single"]["bytes"] + 64
        assert set(out["deltas_per_column"]["columns"]) == set(rows.names)


# ---------------------------------------------------------------------- whole database
def test_db_anchors_on_a_tiny_db(db: Path) -> None:
    out = db_anchors.db_anchors(db)
    assert out["agent_states_rows"] == 600 and out["file_bytes"] == db.stat().st_size
    for tool in ("zstd-19", "xz-9"):
        t = out[tool]
        assert 0 < t["bytes"] < out["file_bytes"] and t["compress_mb_per_s"] > 0
    p = out["parquet_zstd19"]
    assert set(p["tables"]) == {"agent_states", "agents"}
    assert p["bytes"] == sum(t["bytes"] for t in p["tables"].values())
    assert p["tables"]["agent_states"]["rows"] == 600


def test_parquet_keeps_mixed_storage_classes(tmp_path: Path) -> None:
    path = tmp_path / "mixed.db"
    with closing(sqlite3.connect(path)) as con:
        con.execute("CREATE TABLE agent_states (v)")
        con.execute("CREATE TABLE odd (v, w REAL)")
        con.executemany(
            "INSERT INTO odd VALUES (?, ?)",
            [(1, 0.5), (2.5, None), ("x", 1.0), (b"\0", 2.0), (None, 3.0)],
        )
        con.execute("INSERT INTO agent_states VALUES (1)")
        con.commit()
    out = db_anchors.parquet_anchor(path, 1)
    assert out["tables"]["odd"]["tagged_columns"] == ["v"]  # w comes back as REAL/NULL
    assert db_anchors._untagged(db_anchors._tagged(0.1)) == 0.1
    assert not db_anchors._same([1], [1.0])


# ---------------------------------------------------------------------- our codec's rows
def test_round_trip_reads_the_file_apart(db: Path, tmp_path: Path) -> None:
    out = codec_file.round_trip(db, tmp_path, "tiny")
    b = out["bytes"]
    assert 0 < b["features"] < b["sections"] < b["file"] == (tmp_path / "tiny.mtc").stat().st_size
    assert out["verified_states"] == out["states"] == 600 and out["verified_tables"] == 2
    assert out["with_header_share_bits_per_state"] == 8 * (b["sections"] + b["header_share"]) / 600
    with open(tmp_path / "tiny.mtc", "rb") as fh:
        assert b["header_share"] == codec_file.header_share(Reader(fh, "tiny").header)


def test_header_share_is_agent_states_own_entries() -> None:
    own = {"model": {"source": "adaptive"}, "schema": {"features": [1, 2]}, "context": None}
    own["states"] = {"rows": 5}
    states_sql = {"kind": "table", "name": "agent_states", "table": "agent_states", "sql": "C"}
    header = {**own, "objects": [states_sql], "settings": {}}
    share = codec_file.header_share(header)
    assert share == len(zlib.compress(json.dumps({**own, "objects": [states_sql]}).encode(), 9))
    other = {"kind": "table", "name": "other", "table": "other", "sql": "CREATE TABLE other (x)"}
    more = {**header, "objects": [other, states_sql], "settings": {"page_size": 4096}}
    assert codec_file.header_share(more) == share  # other tables and settings are not its share
    longer = {**header, "objects": [{**states_sql, "sql": "CREATE TABLE agent_states (x, y)"}]}
    assert codec_file.header_share(longer) > share
