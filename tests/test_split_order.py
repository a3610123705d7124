"""Each split's rows are in (agent, step) order, with each row's agent and step kept."""

from __future__ import annotations

import numpy as np
import pytest

from meaning_transform.data import SQLiteDataModule, SyntheticDataModule
from meaning_transform.data.datamodule import SPLITS
from meaning_transform.schema.layout import SchemaLayout


def check_order(dm) -> None:
    seen: set[int] = set()
    for s in SPLITS:
        agents, steps = getattr(dm, f"{s}_agents"), getattr(dm, f"{s}_steps")
        assert agents.dtype == np.int64 and steps.dtype == np.int64
        assert len(agents) == len(steps) == len(getattr(dm, f"{s}_x"))
        key = agents * (steps.max() + 1) + steps
        assert (np.diff(key) > 0).all(), s  # sorted by (agent, step), no duplicates
        assert not seen & set(agents.tolist())  # splits hold different agents
        seen |= set(agents.tolist())
        assert len(dm.split_agents[s]) == len(np.unique(agents))


def test_synthetic_rows_keep_agents_and_steps(agentfarm_cfg):
    dm = SyntheticDataModule(agentfarm_cfg, num_states=3000)
    dm.setup()
    check_order(dm)
    same = np.diff(dm.train_agents) == 0
    np.testing.assert_array_equal(np.diff(dm.train_steps)[same], 1)


def test_real_db_rows_are_sorted_by_agent_then_step(real_db, agentfarm_cfg):
    dm = SQLiteDataModule(agentfarm_cfg, path=real_db)
    dm.setup()
    check_order(dm)
    # age +1 per step within an agent once rows are in (agent, step) order
    age = SchemaLayout(dm.schema).native(dm.test_x)[:, dm.schema.columns["age"]].double().numpy()
    same = np.diff(dm.test_agents) == 0
    np.testing.assert_allclose(np.diff(age)[same], 1.0, atol=1e-3)


@pytest.mark.parametrize("n", [1000, 2000])
def test_small_runs_keep_every_agent_type_in_training(agentfarm_cfg, n):
    dm = SyntheticDataModule(agentfarm_cfg, num_states=n)
    dm.setup()
    types = dm.schema.feature("agent_type").categories
    col = dm.schema.columns["agent_type"]
    assert set(dm.train_x[:, col].long().tolist()) == set(range(len(types)))
