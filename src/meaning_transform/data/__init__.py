"""Agent-state data: synthetic generator, AgentFarm SQLite loader and LightningDataModules.

Names are imported on first use, so importing ``meaning_transform.data.errors`` (or this package)
does not pull in torch, Lightning or pyarrow.
"""

from __future__ import annotations

from meaning_transform.lazy import lazy_getattr

_EXPORTS = {
    "AgentStateDataModule": "meaning_transform.data.datamodule",
    "EpochShuffleSampler": "meaning_transform.data.datamodule",
    "SQLiteDataModule": "meaning_transform.data.datamodule",
    "SyntheticDataModule": "meaning_transform.data.datamodule",
    "TensorRows": "meaning_transform.data.datamodule",
    "collate_batch": "meaning_transform.data.datamodule",
    "DataError": "meaning_transform.data.errors",
    "check_sqlite_args": "meaning_transform.data.sqlite",
    "load_sqlite": "meaning_transform.data.sqlite",
    "generate_synthetic": "meaning_transform.data.synthetic",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
