"""Agent-state data: synthetic generator, AgentFarm SQLite loader and LightningDataModules."""

from meaning_transform.data.datamodule import (
    AgentStateDataModule,
    EpochShuffleSampler,
    SQLiteDataModule,
    SyntheticDataModule,
    TensorRows,
    collate_batch,
)
from meaning_transform.data.errors import DataError
from meaning_transform.data.sqlite import check_sqlite_args, load_sqlite
from meaning_transform.data.synthetic import generate_synthetic

__all__ = [
    "AgentStateDataModule",
    "DataError",
    "EpochShuffleSampler",
    "SQLiteDataModule",
    "SyntheticDataModule",
    "TensorRows",
    "check_sqlite_args",
    "collate_batch",
    "generate_synthetic",
    "load_sqlite",
]
