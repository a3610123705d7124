"""Unit tests of the read-only AgentFarm SQLite loader, on databases written in tmp_path."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from meaning_transform.data import DataError, load_sqlite
from meaning_transform.data.testing import write_agentfarm_db
from meaning_transform.schema import FeatureSchema


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
    assert set(table) == set(written)
    np.testing.assert_array_equal(table["agent_id"], written["agent_id"])
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


def test_old_schema_needs_missing_columns_optional(tmp_path, agentfarm_cfg):
    path = tmp_path / "old.db"
    write_agentfarm_db(path, 100, num_agents=3, old_schema=True)
    with pytest.raises(
        DataError,
        match=r"lacks required column\(s\) \['starvation_counter'\].*"
        r"columns found: \['id', 'simulation_id', 'step_number'",
    ):
        load_sqlite(path, FeatureSchema.from_config(agentfarm_cfg))
    table = load_sqlite(path, schema_with(agentfarm_cfg, starvation_counter=True))
    assert "starvation_counter" not in table and "starting_health" not in table
    assert "agent_type" in table


def test_no_agents_table(tmp_path, agentfarm_cfg, caplog):
    path = tmp_path / "old_no_agents.db"
    write_agentfarm_db(path, 100, num_agents=3, old_schema=True, with_agents_table=False)
    schema = schema_with(agentfarm_cfg, starvation_counter=True)
    with pytest.raises(DataError, match=r"set schema.features.agent_type.optional=true"):
        load_sqlite(path, schema)
    optional = schema_with(agentfarm_cfg, starvation_counter=True, agent_type=True)
    with caplog.at_level(logging.INFO, logger="meaning_transform.data.sqlite"):
        table = load_sqlite(path, optional)
    assert "agent_type" not in table
    assert len([r for r in caplog.records if "agent_type" in r.getMessage()]) == 1
    with pytest.raises(DataError, match="agent_types filter needs the 'agents' table"):
        load_sqlite(path, optional, agent_types=["system"])


def test_missing_file(tmp_path, agentfarm_schema):
    with pytest.raises(DataError, match=r"database file '.*nope.db' not found"):
        load_sqlite(tmp_path / "nope.db", agentfarm_schema)
    with pytest.raises(DataError, match="is not a file"):
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
