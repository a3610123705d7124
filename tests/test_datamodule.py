"""Unit tests of the agent-state datamodules: cleaning, split by agent, fit on train, loaders."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from contextlib import closing

import lightning as L
import numpy as np
import pytest
import torch
from agentfarm_db import write_agentfarm_db
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from meaning_transform.data import (
    DataError,
    EpochShuffleSampler,
    SQLiteDataModule,
    SyntheticDataModule,
    TensorRows,
    generate_synthetic,
)
from meaning_transform.schema import INVALID_VALUES


def synthetic(cfg, **kwargs) -> SyntheticDataModule:
    kwargs = {"num_states": 2000, "num_agents": 20, "batch_size": 32, **kwargs}
    dm = SyntheticDataModule(cfg, **kwargs)
    dm.setup("fit")
    return dm


def test_split_by_agent(agentfarm_cfg):
    dm = synthetic(agentfarm_cfg)
    agents = dm.split_agents
    assert [len(agents[s]) for s in ("train", "val", "test")] == [14, 4, 2]  # 0.2, 0.1 of 20
    assert not set(agents["train"]) & set(agents["val"])
    assert not set(agents["train"]) & set(agents["test"])
    assert not set(agents["val"]) & set(agents["test"])
    assert set(np.concatenate(list(agents.values()))) == set(range(20))
    rows = generate_synthetic(2000, seed=0, num_agents=20)["agent_id"]
    for split in ("train", "val", "test"):
        assert len(getattr(dm, f"{split}_x")) == np.isin(rows, agents[split]).sum()


def test_schema_fitted_on_train_only(agentfarm_cfg):
    dm = synthetic(agentfarm_cfg)
    table = generate_synthetic(2000, seed=0, num_agents=20)
    train = np.isin(table["agent_id"], dm.split_agents["train"])
    assert dm.schema.fitted and not dm.declared_schema.fitted
    assert dm.schema.normalizers["total_reward"].mean == pytest.approx(
        table["total_reward"][train].mean()
    )
    assert "position_z" not in dm.schema.names and "starting_health" not in dm.schema.names
    assert dm.train_x.dtype == torch.float32
    assert dm.train_x.shape[1] == len(dm.schema.features)
    assert dm.train_x[:, dm.schema.columns["total_reward"]].mean().item() == pytest.approx(
        0, abs=1e-5
    )


def test_deterministic_by_split_seed(agentfarm_cfg):
    a, b = synthetic(agentfarm_cfg), synthetic(agentfarm_cfg)
    c = synthetic(agentfarm_cfg, split_seed=1)
    np.testing.assert_array_equal(a.split_agents["val"], b.split_agents["val"])
    assert torch.equal(a.train_x, b.train_x)
    assert not np.array_equal(a.split_agents["train"], c.split_agents["train"])


def test_setup_is_idempotent(agentfarm_cfg):
    dm = synthetic(agentfarm_cfg)
    x, schema = dm.train_x, dm.schema
    dm.setup("validate")
    assert dm.train_x is x and dm.schema is schema


def test_loaders_give_tensor_batches(agentfarm_cfg, monkeypatch):
    dm = synthetic(agentfarm_cfg, batch_size=50)
    monkeypatch.setattr(TensorRows, "__getitem__", lambda self, i: pytest.fail("per-row fetch"))
    batches = list(dm.train_dataloader())
    assert all(isinstance(b, torch.Tensor) and b.shape[1] == dm.train_x.shape[1] for b in batches)
    assert batches[0].shape[0] == 50
    together = torch.cat(batches)
    assert not torch.equal(together, dm.train_x)  # shuffled
    assert torch.equal(together.sort(dim=0).values, dm.train_x.sort(dim=0).values)  # each once
    val = list(dm.val_dataloader())
    assert len(val) == 1 and torch.equal(val[0], dm.val_x)  # in order, eval batch >= 1024
    assert torch.equal(next(iter(dm.predict_dataloader())), dm.test_x)
    assert not dm.train_dataloader().pin_memory or torch.cuda.is_available()


def test_unshuffled_train_loader(agentfarm_cfg):
    dm = synthetic(agentfarm_cfg, shuffle=False, batch_size=4000)
    assert torch.equal(next(iter(dm.train_dataloader())), dm.train_x)


def test_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(100, seed=3), EpochShuffleSampler(100, seed=3)
    first = list(a)
    assert first == list(b) and sorted(first) == list(range(100))
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    a.set_epoch(0)
    assert list(a) == first
    assert list(EpochShuffleSampler(100, seed=4)) != first


def test_sampler_under_ddp_wrapper():
    shards = []
    for rank in range(2):
        inner = EpochShuffleSampler(10, seed=0)
        wrapper = DistributedSamplerWrapper(inner, num_replicas=2, rank=rank, shuffle=False)
        wrapper.set_epoch(2)
        assert inner.epoch == 2  # Lightning's wrapper forwards set_epoch
        shards.append(list(wrapper))
    assert sorted(shards[0] + shards[1]) == list(range(10))


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.clone())
        return (self.w * batch.sum()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_sets_a_new_order_each_epoch(agentfarm_cfg):
    dm = synthetic(agentfarm_cfg, num_states=200, num_agents=10, batch_size=1000)
    model = _Recorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    first, second = model.seen
    assert first.shape == second.shape and not torch.equal(first, second)
    sampler = EpochShuffleSampler(len(dm.train_x), 0)
    assert torch.equal(first, dm.train_x[list(sampler)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"eval_batch_size": -1}, "eval_batch_size must be a positive integer"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\), got 1.0"),
        ({"test_fraction": -0.1}, "test_fraction must be in"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"),
        ({"num_states": 0}, "num_states must be a positive integer, got 0"),
        ({"num_agents": 30, "num_states": 10}, r"num_agents \(30\) must be <= num_states"),
    ],
)
def test_constructor_validation(agentfarm_cfg, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticDataModule(agentfarm_cfg, **kwargs)


def test_sqlite_constructor_validation(tmp_path, agentfarm_cfg):
    with pytest.raises(DataError, match="not found"):
        SQLiteDataModule(agentfarm_cfg, path=tmp_path / "missing.db")
    path = tmp_path / "s.db"
    write_agentfarm_db(path, 50, num_agents=5)
    with pytest.raises(DataError, match="step_range"):
        SQLiteDataModule(agentfarm_cfg, path=path, step_range=[4, 1])


def test_fractions_leaving_no_training_agents(agentfarm_cfg):
    dm = SyntheticDataModule(agentfarm_cfg, num_states=100, num_agents=2)
    with pytest.raises(
        DataError,
        match=r"val_fraction=0.2 and test_fraction=0.1 leave no "
        r"training agents: the data has 2 agent",
    ):
        dm.setup()
    dm = SyntheticDataModule(agentfarm_cfg, num_states=100, num_agents=3, val_fraction=0.0)
    dm.setup()
    assert len(dm.val_x) == 0 and len(dm.split_agents["test"]) == 1


@pytest.fixture
def null_db(tmp_path):
    """400 states; current_health NULL in 5 rows, total_reward inf in rows 0 and 1; bad rows."""
    path = tmp_path / "nulls.db"
    written = write_agentfarm_db(path, 400, num_agents=10, nulls={"current_health": 5})
    with closing(sqlite3.connect(path)) as con:
        con.execute("UPDATE agent_states SET total_reward = 9e999 WHERE rowid IN (1, 2)")  # inf
        con.commit()
    null_rows = {i for i, v in enumerate(written["current_health"]) if v is None}
    return path, len(null_rows | {0, 1})


def test_invalid_rows_are_reported(null_db, agentfarm_cfg):
    dm = SQLiteDataModule(agentfarm_cfg, path=null_db[0])
    with pytest.raises(
        DataError,
        match=rf"{null_db[1]} of 400 rows have NULL/NaN/inf or out-of-range .* values "
        r"\(rows per column: current_health: 5, total_reward: 2\).*data.drop_invalid=true",
    ):
        dm.setup()


def test_drop_invalid(null_db, agentfarm_cfg, caplog):
    dm = SQLiteDataModule(agentfarm_cfg, path=null_db[0], drop_invalid=True)
    with caplog.at_level(logging.INFO, logger="meaning_transform.data.datamodule"):
        dm.setup()
    rows = sum(len(x) for x in (dm.train_x, dm.val_x, dm.test_x))
    assert rows == 400 - null_db[1]
    records = [r for r in caplog.records if r.name == "meaning_transform.data.datamodule"]
    assert [r.getMessage() for r in records] == [
        f"dropped {null_db[1]} of 400 rows with {INVALID_VALUES} values "
        "(current_health: 5, total_reward: 2)"
    ]
    assert torch.isfinite(dm.train_x).all()


@pytest.fixture
def huge_db(tmp_path):
    """400 states, position_x = 1e308 (finite, but beyond float32) in 2% of them."""
    path = tmp_path / "huge.db"
    write_agentfarm_db(path, 400, num_agents=8)
    with closing(sqlite3.connect(path)) as con:
        con.execute("UPDATE agent_states SET position_x = 1e308 WHERE rowid % 50 = 0")
        con.commit()
    return path


def test_huge_finite_values_are_invalid_rows(huge_db, agentfarm_cfg):
    with pytest.raises(DataError, match=r"^8 of 400 rows .* \(rows per column: position_x: 8\)"):
        SQLiteDataModule(agentfarm_cfg, path=huge_db).setup()
    dm = SQLiteDataModule(agentfarm_cfg, path=huge_db, drop_invalid=True)
    dm.setup()
    assert sum(len(x) for x in (dm.train_x, dm.val_x, dm.test_x)) == 392
    assert torch.isfinite(dm.train_x).all() and dm.train_x.abs().max() < 100


def test_values_outside_a_declared_range_are_invalid_rows(tmp_path, agentfarm_cfg):
    path = tmp_path / "s.db"
    written = write_agentfarm_db(path, 400, num_agents=8)
    agentfarm_cfg["features"]["current_health"]["max"] = 90.0
    above = int(np.count_nonzero(np.asarray(written["current_health"], dtype=float) > 90))
    assert 0 < above < 400
    with pytest.raises(DataError, match=rf"^{above} of 400 rows .*current_health: {above}\)"):
        SQLiteDataModule(agentfarm_cfg, path=path).setup()


def test_category_outside_vocabulary(tmp_path, agentfarm_cfg):
    path = tmp_path / "chaos.db"
    write_agentfarm_db(path, 600, num_agents=30, agent_types=("system", "chaos"))
    agentfarm_cfg["features"]["agent_type"]["categories"] = ["control", "independent", "system"]
    dm = SQLiteDataModule(agentfarm_cfg, path=path)
    with pytest.raises(ValueError, match=r"1 value\(s\) not in its vocabulary \('chaos';"):
        dm.setup()


def test_sqlite_datamodule_and_summary(tmp_path, agentfarm_cfg):
    path = tmp_path / "run.db"
    write_agentfarm_db(path, 1000, num_agents=20, seed=2)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    dm = SQLiteDataModule(agentfarm_cfg, path=path, agent_types=["system", "control"])
    text = dm.summary()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert set(dm.schema.feature("agent_type").categories) <= {"system", "control"}
    assert "train" in text and "agent_type" in text and "mean" in text
    assert "['position_z', 'starting_health']" in text
    assert isinstance(dm.split_agents["train"][0], str)


def test_summary_numbers_by_hand(agentfarm_cfg):
    dm = synthetic(agentfarm_cfg, num_states=300, num_agents=6)
    lines = dm.summary().splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:4]}
    assert rows["train"] == [str(len(dm.train_x)), "4"]
    assert rows["val"] == [str(len(dm.val_x)), "1"]  # round(0.2 * 6) = 1
    defending = generate_synthetic(300, num_agents=6)["is_defending"]
    line = next(x for x in lines if x.startswith("is_defending"))
    assert line.endswith(f"0: {int((defending == 0).sum())}, 1: {int(defending.sum())}")


def test_real_database_datamodule(real_db, agentfarm_cfg):
    stat = real_db.stat()
    dm = SQLiteDataModule(agentfarm_cfg, path=real_db)
    dm.setup()
    assert sum(len(x) for x in (dm.train_x, dm.val_x, dm.test_x)) == 18_758
    assert [len(dm.split_agents[s]) for s in ("train", "val", "test")] == [58, 16, 8]
    after = real_db.stat()
    assert (after.st_mtime_ns, after.st_size) == (stat.st_mtime_ns, stat.st_size)


def test_last_one_state_training_batch_is_dropped(agentfarm_cfg):
    from meaning_transform.data import SyntheticDataModule

    dm = SyntheticDataModule(schema=agentfarm_cfg, num_states=2000, num_agents=20, batch_size=64)
    dm.setup("fit")
    n = len(dm.train_x)
    dm.batch_size = n - 1  # leaves exactly one state for a last batch
    sizes = [len(b) for b in dm.train_dataloader()]
    assert sizes == [n - 1]
    dm.batch_size = n - 2
    assert [len(b) for b in dm.train_dataloader()] == [n - 2, 2]
