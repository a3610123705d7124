"""Unit tests of the read-only AgentFarm SQLite loader, on databases written in tmp_path."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import adbc_driver_sqlite.dbapi as adbc
import numpy as np
import pytest
from agentfarm_db import write_agentfarm_db
from omegaconf import OmegaConf

from meaning_transform.api import load_config
from meaning_transform.data import DataError, load_sqlite
from meaning_transform.data import sqlite as sqlite_mod
from meaning_transform.schema import FeatureSchema
from meaning_transform.schema.table import distinct_str, encode, fit, is_unusable, present


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("db") / "simulation.db"
    return path, write_agentfarm_db(path, 600, num_agents=12, seed=4)


def sql(path: Path, *statements: str) -> None:
    with closing(sqlite3.connect(path)) as con:
        for statement in statements:
            con.execute(statement)
        con.commit()


def schema_with(cfg: dict, **optional: bool) -> FeatureSchema:
    for name, flag in optional.items():
        cfg["features"][name]["optional"] = flag
    return FeatureSchema.from_config(cfg)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_of_written_values(db, agentfarm_schema):
    path, written = db
    before = digest(path)
    table = load_sqlite(path, agentfarm_schema)
    assert digest(path) == before  # opened read-only: the file is byte-identical
    assert set(table) == set(written) | {"agent"}
    np.testing.assert_array_equal(table["agent_id"], written["agent_id"])
    # agent: each row's index into the sorted distinct ids (the datamodule splits on it)
    ids = np.array(sorted(set(written["agent_id"].tolist())), dtype=object)
    np.testing.assert_array_equal(ids[table["agent"]], written["agent_id"])
    np.testing.assert_array_equal(table["step"], written["step"])
    assert table["step"].dtype == np.int64
    for name in ("position_x", "resource_level", "current_health", "total_reward", "age"):
        np.testing.assert_array_equal(table[name], written[name])
    assert np.isnan(table["position_z"]).all()  # NULL -> NaN
    assert set(np.unique(table["is_defending"])) == {0.0, 1.0}  # BOOLEAN stored 0/1
    np.testing.assert_array_equal(table["agent_type"], written["agent_type"])


def test_filters(db, agentfarm_schema):
    path, written = db
    table = load_sqlite(path, agentfarm_schema, step_range=[3, 5])
    assert table["step"].min() >= 3 and table["step"].max() <= 5  # inclusive both ends
    assert len(table["step"]) == np.count_nonzero((written["step"] >= 3) & (written["step"] <= 5))
    table = load_sqlite(path, agentfarm_schema, agent_types=["control"])
    assert set(table["agent_type"]) == {"control"}
    assert len(table["step"]) == np.count_nonzero(written["agent_type"] == "control")
    assert len(load_sqlite(path, agentfarm_schema, limit=7)["step"]) == 7


def test_nulls_are_returned_not_rejected(tmp_path, agentfarm_schema):
    path = tmp_path / "nulls.db"
    write_agentfarm_db(path, 100, num_agents=3, nulls={"current_health": 3})
    table = load_sqlite(path, agentfarm_schema)
    assert np.isnan(table["current_health"]).sum() == 3


def test_agent_missing_from_agents_table_gives_none(tmp_path, agentfarm_schema):
    path = tmp_path / "orphan.db"
    written = write_agentfarm_db(path, 100, num_agents=3)
    sql(path, "DELETE FROM agents WHERE agent_id = 'agent_0'")
    table = load_sqlite(path, agentfarm_schema)
    assert table["agent_type"].tolist().count(None) == np.count_nonzero(
        written["agent_id"] == "agent_0"
    )


def test_old_schema_loads_a_column_marked_required_is_named(tmp_path, agentfarm_cfg):
    path = tmp_path / "old.db"
    write_agentfarm_db(path, 100, num_agents=3, old_schema=True)
    table = load_sqlite(path, FeatureSchema.from_config(agentfarm_cfg))  # the shipped schema
    assert "starvation_counter" not in table and "starting_health" not in table
    assert "agent_type" in table
    with pytest.raises(
        DataError,
        match=r"lacks required column\(s\) \['starvation_counter'\].*"
        r"columns found: \['id', 'simulation_id', 'step_number'",
    ):
        load_sqlite(path, schema_with(agentfarm_cfg, starvation_counter=False))


def test_no_agents_table(tmp_path, agentfarm_cfg, caplog):
    path = tmp_path / "old_no_agents.db"
    write_agentfarm_db(path, 100, num_agents=3, old_schema=True, with_agents_table=False)
    optional = FeatureSchema.from_config(agentfarm_cfg)  # the shipped schema
    required = schema_with(agentfarm_cfg, agent_type=False)
    with pytest.raises(DataError, match=r"set schema.features.agent_type.optional=true"):
        load_sqlite(path, required)
    with caplog.at_level(logging.INFO, logger="meaning_transform.data.sqlite"):
        table = load_sqlite(path, optional)
    assert "agent_type" not in table
    assert len([r for r in caplog.records if "agent_type" in r.getMessage()]) == 1
    with pytest.raises(DataError, match="agent_types filter needs the 'agents' table"):
        load_sqlite(path, optional, agent_types=["system"])


def test_missing_file(tmp_path, agentfarm_schema):
    with pytest.raises(DataError, match=r"^data.path='.*nope.db': file not found"):
        load_sqlite(tmp_path / "nope.db", agentfarm_schema)
    with pytest.raises(DataError, match="not a file"):
        load_sqlite(tmp_path, agentfarm_schema)


@pytest.mark.parametrize("content", [b"", b"id,step\n1,2\n"])
def test_not_sqlite(tmp_path, agentfarm_schema, content):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match="is not an SQLite database"):
        load_sqlite(path, agentfarm_schema)


def test_no_agent_states_table(tmp_path, agentfarm_schema):
    path = tmp_path / "other.db"
    sql(path, "CREATE TABLE agents (agent_id TEXT)")
    with pytest.raises(DataError, match=r"no table 'agent_states'; tables found: \['agents'\]"):
        load_sqlite(path, agentfarm_schema)


def test_zero_rows(tmp_path, db, agentfarm_schema):
    path = tmp_path / "empty.db"
    write_agentfarm_db(path, 10, num_agents=2)
    sql(path, "DELETE FROM agent_states")
    with pytest.raises(DataError, match="table 'agent_states' has no rows"):
        load_sqlite(path, agentfarm_schema)
    with pytest.raises(
        DataError,
        match=r"no rows .* match the filters step_range=\(9000, 9001\), "
        r"agent_types=\['system'\] \(the table has 600 rows",
    ):
        load_sqlite(db[0], agentfarm_schema, step_range=(9000, 9001), agent_types=["system"])


def test_unknown_agent_types(db, agentfarm_schema):
    with pytest.raises(
        DataError,
        match=r"agent_types \['chaos'\] not in .*types present: "
        r"\['control', 'independent', 'system'\]",
    ):
        load_sqlite(db[0], agentfarm_schema, agent_types=["system", "chaos"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"step_range": [5, 3]}, "step_range must be"),
        ({"step_range": [1]}, "step_range must be"),
        ({"step_range": "15"}, "step_range must be"),
        ({"step_range": [0.5, 2]}, "step_range must be"),
        ({"agent_types": "system"}, "agent_types must be a list"),
        ({"agent_types": []}, "non-empty list"),
        ({"limit": 0}, "limit must be a positive integer"),
    ],
)
def test_bad_arguments(db, agentfarm_schema, kwargs, message):
    with pytest.raises(DataError, match=message):
        load_sqlite(db[0], agentfarm_schema, **kwargs)


def test_text_in_numeric_column(tmp_path, agentfarm_schema):
    path = tmp_path / "text.db"
    write_agentfarm_db(path, 20, num_agents=2)
    sql(path, "UPDATE agent_states SET resource_level = 'lots' WHERE rowid = 3")
    with pytest.raises(
        DataError,
        match=r"agent_states.resource_level should hold numbers, "
        r"found 'lots'",
    ):
        load_sqlite(path, agentfarm_schema)


def test_null_key(tmp_path, agentfarm_schema):
    path = tmp_path / "nullkey.db"
    write_agentfarm_db(path, 20, num_agents=2)
    sql(path, "UPDATE agent_states SET agent_id = NULL WHERE rowid IN (1, 2)")
    with pytest.raises(DataError, match="2 rows of 'agent_states' have NULL agent_id"):
        load_sqlite(path, agentfarm_schema)


def test_real_agentfarm_database(real_db, agentfarm_schema):
    stat = real_db.stat()
    table = load_sqlite(real_db, agentfarm_schema)
    assert len(table["step"]) == 18_758
    types, counts = np.unique(table["agent_type"].astype(str), return_counts=True)
    assert dict(zip(types, counts, strict=True)) == {
        "control": 4188,
        "independent": 5584,
        "system": 8986,
    }
    assert np.isnan(table["position_z"]).all() and (table["starting_health"] == 100).all()
    assert table["step"].min() == 0 and table["step"].max() == 500
    assert len(np.unique(table["agent_id"])) == 82
    after = real_db.stat()
    assert (after.st_mtime_ns, after.st_size) == (stat.st_mtime_ns, stat.st_size)


# ------------------------------------------------------------------ ADBC reader specifics
def test_read_only_leaves_no_side_files(tmp_path, agentfarm_schema, monkeypatch):
    path = tmp_path / "ro.db"
    write_agentfarm_db(path, 300, num_agents=5)
    before, files = digest(path), sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(sqlite_mod, "PART_ROWS", 50)  # parallel connections too
    load_sqlite(path, agentfarm_schema)
    types = ["control", "independent", "system"]
    load_sqlite(path, agentfarm_schema, step_range=[0, 300], agent_types=types, limit=5)
    with pytest.raises(DataError):
        load_sqlite(path, agentfarm_schema, agent_types=["chaos"])
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # no -wal/-shm/-journal


def test_connection_refuses_writes(db):
    with closing(sqlite_mod.connect_read_only(db[0])) as con, closing(con.cursor()) as cur:
        for statement in ("DELETE FROM agent_states", "CREATE TABLE t (x)"):
            with pytest.raises(adbc.Error, match="readonly"):
                cur.execute(statement)


@pytest.mark.parametrize("part_rows", [1, 7, 100])
def test_parallel_parts_equal_one_query(db, agentfarm_schema, monkeypatch, part_rows):
    whole = load_sqlite(db[0], agentfarm_schema)
    monkeypatch.setattr(sqlite_mod, "PART_ROWS", part_rows)
    monkeypatch.setattr(sqlite_mod.os, "cpu_count", lambda: 4)
    with closing(sqlite_mod.connect_read_only(db[0])) as con:
        assert len(sqlite_mod._parts(con, ["id"])) == 4
    for kwargs in ({}, {"step_range": [2, 9], "agent_types": ["control", "system"]}):
        split = load_sqlite(db[0], agentfarm_schema, **kwargs)
        one = whole if not kwargs else _one_query(db[0], agentfarm_schema, monkeypatch, kwargs)
        assert split.keys() == one.keys()
        for name in one:
            np.testing.assert_array_equal(split[name], one[name])


def _one_query(path, schema, monkeypatch, kwargs):
    with monkeypatch.context() as m:
        m.setattr(sqlite_mod, "MAX_PARTS", 1)
        return load_sqlite(path, schema, **kwargs)


def test_parameters_are_bound_not_spliced(db, agentfarm_schema):
    with pytest.raises(DataError, match=r"agent_types \[\"x' OR 1=1 --\"\] not in"):
        load_sqlite(db[0], agentfarm_schema, agent_types=["x' OR 1=1 --"])


def test_column_types_do_not_depend_on_first_rows(tmp_path, agentfarm_schema, monkeypatch):
    """NULLs first, then numbers; INTEGER columns holding REALs later on; NULL agent types."""
    path = tmp_path / "mixed.db"
    write_agentfarm_db(path, 200, num_agents=4)
    sql(
        path,
        "UPDATE agent_states SET current_health = NULL WHERE rowid <= 150",
        "UPDATE agent_states SET position_z = 0.25 WHERE rowid = 190",
        "UPDATE agent_states SET age = 2.5 WHERE rowid = 180",
        "UPDATE agents SET agent_type = NULL WHERE agent_id = 'agent_0'",
    )
    monkeypatch.setattr(sqlite_mod, "BATCH_ROWS", 16)  # the driver types columns per batch
    table = load_sqlite(path, agentfarm_schema)
    assert np.isnan(table["current_health"][:150]).all()
    assert np.isfinite(table["current_health"][150:]).all()
    assert table["position_z"][189] == 0.25 and np.isnan(table["position_z"][:189]).all()
    assert table["age"][179] == 2.5
    orphan = table["agent_id"] == "agent_0"
    assert orphan.any() and table["agent_type"].dtype == object
    assert all(v is None for v in table["agent_type"][orphan])
    assert all(isinstance(v, str) for v in table["agent_type"][~orphan])


def test_late_text_in_numeric_column(tmp_path, agentfarm_schema, monkeypatch):
    path = tmp_path / "late_text.db"
    write_agentfarm_db(path, 200, num_agents=2)
    sql(path, "UPDATE agent_states SET total_reward = x'00ff' WHERE rowid = 190")
    monkeypatch.setattr(sqlite_mod, "BATCH_ROWS", 16)  # the blob comes after the first batch
    with pytest.raises(DataError, match=r"agent_states.total_reward should hold numbers, found b'"):
        load_sqlite(path, agentfarm_schema)


def test_agent_type_is_a_str_array_and_encodes(db, agentfarm_schema):
    table = load_sqlite(db[0], agentfarm_schema)
    assert table["agent_type"].dtype.kind == "U" and table["agent_id"].dtype == object
    fitted = fit(agentfarm_schema, table)
    assert fitted.feature("agent_type").categories == ("control", "independent", "system")
    codes = encode(fitted, table)[:, fitted.columns["agent_type"]].numpy()
    expected = np.searchsorted(["control", "independent", "system"], table["agent_type"])
    np.testing.assert_array_equal(codes, expected)


def test_vectorized_schema_helpers_match_python():
    rng = np.random.default_rng(0)
    objects = np.array([None, "a", float("nan"), float("inf"), -float("inf"), 1.5, 2, ""], object)
    expected = [
        v is not None and not (isinstance(v, float) and not np.isfinite(v)) for v in objects
    ]
    np.testing.assert_array_equal(present(objects), expected)
    assert present(np.array(["a", ""])).all()
    for n in (0, 1, 50, 5000):
        for card in (1, 3, 40):
            col = rng.integers(0, card, n).astype(str)
            np.testing.assert_array_equal(distinct_str(col), np.unique(col))
            np.testing.assert_array_equal(distinct_str(col.astype(object)), np.unique(col))
    assert is_unusable(np.array([None, "a", "a"], object))
    assert not is_unusable(np.array([1, 1.0], object))  # '1' != '1.0', as np.unique(astype(str))
    assert is_unusable(np.array([np.nan, 2.0, 2.0])) and not is_unusable(np.array(["a", "b"]))


# ---------------------------------------------------------------- issue 10: old schema, WAL, locks
def old_schema_copy(real_db: Path, folder: Path) -> Path:
    """The shared db's first 60 steps in the older AgentFarm layout: no starting_health, no
    starvation_counter, no agents table (read from a copy of the shared db)."""
    copy = folder / "real_copy.db"
    copy.write_bytes(real_db.read_bytes())
    old = folder / "old_schema.db"
    with closing(sqlite3.connect(old)) as con:
        con.execute(f"ATTACH DATABASE '{copy}' AS real")
        cols = [r[1] for r in con.execute("PRAGMA real.table_info(agent_states)")]
        keep = ", ".join(c for c in cols if c not in ("starting_health", "starvation_counter"))
        con.execute(
            f"CREATE TABLE agent_states AS SELECT {keep} FROM real.agent_states "
            "WHERE step_number < 60"
        )
        con.commit()
    return old


def test_old_agentfarm_schema_loads_with_the_shipped_schema(real_db, tmp_path, caplog):
    from meaning_transform.data import SQLiteDataModule
    from meaning_transform.module import MeaningModule

    path = old_schema_copy(real_db, tmp_path)
    cfg = load_config(["data=sqlite", f"data.path={path}"])
    dm = SQLiteDataModule(OmegaConf.to_container(cfg.schema), path=path)
    with caplog.at_level(logging.INFO, logger="meaning_transform"):
        dm.setup()
    names = dm.schema.names
    assert "starvation_counter" not in names and "agent_type" not in names
    assert "starting_health" not in names and "current_health" in names
    assert [p.name for p in dm.schema.predicates] == ["alive", "low_health"]  # starving dropped
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "'agents' table" in logged and "starving" in logged
    model = MeaningModule(
        dm.schema.to_dict(), cfg.model, cfg.compression, cfg.loss, cfg.optimizer, None
    )
    assert model(dm.train_x[:4])[0].shape[0] == 4


def files_beside(db: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in db.parent.iterdir()}


def test_wal_database_read_changes_nothing_beside_it(tmp_path, agentfarm_schema):
    path = tmp_path / "wal.db"
    write_agentfarm_db(path, 200, num_agents=4)
    sql(path, "PRAGMA journal_mode=WAL")
    before = files_beside(path)
    assert list(before) == ["wal.db"]
    assert len(load_sqlite(path, agentfarm_schema)["step"]) == 200
    assert files_beside(path) == before  # no -wal, no -shm, nothing touched


def test_wal_database_with_a_writer_attached_reads_its_changes(tmp_path, agentfarm_schema):
    path = tmp_path / "wal.db"
    write_agentfarm_db(path, 200, num_agents=4)
    sql(path, "PRAGMA journal_mode=WAL")
    with closing(sqlite3.connect(path)) as writer:
        writer.execute("PRAGMA wal_autocheckpoint=0")  # the change stays in wal.db-wal
        writer.execute("DELETE FROM agent_states WHERE rowid <= 10")
        writer.commit()
        assert len(load_sqlite(path, agentfarm_schema)["step"]) == 190


def test_locked_database_is_waited_for(tmp_path, agentfarm_schema):
    """Another process holds an exclusive lock for 1.5 s: the read waits instead of failing."""
    path = tmp_path / "locked.db"
    write_agentfarm_db(path, 200, num_agents=4)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True)\n"
            "time.sleep(1.5); c.execute('COMMIT')\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert len(load_sqlite(path, agentfarm_schema)["step"]) == 200
    finally:
        holder.wait(timeout=30)
