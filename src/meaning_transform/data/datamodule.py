"""LightningDataModules of agent states: load a table, split by agent, fit the schema on train.

Each split is one float32 tensor in memory; a batch is ``x[indices]`` (no per-sample work).
The training order is a permutation that depends only on ``(split_seed, epoch)``, so a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from meaning_transform.data.context import check_context, with_previous
from meaning_transform.data.errors import DataError
from meaning_transform.data.sqlite import check_sqlite_args, read_sqlite
from meaning_transform.data.synthetic import generate_synthetic
from meaning_transform.grid import MeaningGrid
from meaning_transform.schema import INVALID_VALUES, Feature, FeatureSchema, Table
from meaning_transform.schema import table as schema_table
from meaning_transform.schema.layout import SchemaLayout

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIN_EVAL_BATCH = 1024


class TensorRows(Dataset):
    """Rows of one tensor; ``__getitems__`` returns a whole batch as one index operation."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.x[index]

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor:
        """The batch ``x[indices]`` (DataLoader calls this instead of one __getitem__ per row)."""
        return self.x[torch.as_tensor(indices, dtype=torch.long)]


def collate_batch(batch: torch.Tensor) -> torch.Tensor:
    """Collate function for TensorRows: the batch is already a [B, F] tensor."""
    return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` that depends only on ``(seed, epoch)``; call set_epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of this epoch (Lightning calls it at every epoch start)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class AgentStateDataModule(L.LightningDataModule, ABC):
    """Agent states split by agent; ``setup`` fits the schema on train and encodes each split.

    Given an already fitted schema (e.g. a checkpoint's), ``setup`` encodes with it unchanged.
    """

    def __init__(
        self,
        schema: FeatureSchema | Mapping[str, Any],
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        drop_invalid: bool = False,
        shuffle: bool = True,
        context: str | None = None,
    ) -> None:
        super().__init__()
        # model.context=previous: loaders serve each state with its agent's previous one
        self.context = check_context(context)
        _check_positive_int("batch_size", batch_size)
        if eval_batch_size is not None:
            _check_positive_int("eval_batch_size", eval_batch_size)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 to leave agents for training, "
                f"got {val_fraction} + {test_fraction}"
            )
        self.declared_schema = (
            schema if isinstance(schema, FeatureSchema) else FeatureSchema.from_config(schema)
        )
        self.schema = self.declared_schema  # replaced by the fitted schema in setup()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or max(batch_size, MIN_EVAL_BATCH)
        self.fractions = {"val": val_fraction, "test": test_fraction}
        self.split_seed = int(split_seed)
        self.drop_invalid = drop_invalid
        self.shuffle = shuffle
        self.split_agents: dict[str, np.ndarray] = {}
        self.train_x = self.val_x = self.test_x = torch.empty(0)
        # per split, each row's agent (index into the sorted agent ids) and step
        self.train_agents = self.val_agents = self.test_agents = np.empty(0, dtype=np.int64)
        self.train_steps = self.val_steps = self.test_steps = np.empty(0, dtype=np.int64)
        # per split, (data tensor, its rows with context): what loaders serve when context is set
        self._rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ready = False

    @abstractmethod
    def load_table(self) -> Table:
        """The full table of agent states (columns agent_id, step and the features)."""

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Load, clean, split by agent, fit the schema on train and encode (once).

        Every row's values are scanned for invalid ones once, here; fitting and encoding are
        told so and do not scan again.
        """
        if self._ready:
            return
        table = self._valid_rows(self.load_table())
        codes, agents = agent_codes(table)
        split_of_agent = self._assign_splits(len(agents), self._agent_kinds(table, codes))
        split_of_row = split_of_agent[codes]
        # Rows of each split in (agent, step) order; each row's agent code and step are kept.
        order = np.lexsort((table["step"], codes))
        table, codes, split_of_row = _take(table, order), codes[order], split_of_row[order]
        parts = {s: _take(table, split_of_row == i) for i, s in enumerate(SPLITS)}
        for i, s in enumerate(SPLITS):
            setattr(self, f"{s}_agents", codes[split_of_row == i].astype(np.int64))
            setattr(self, f"{s}_steps", np.asarray(parts[s]["step"], dtype=np.int64))
        self.split_agents = {s: agents[split_of_agent == i] for i, s in enumerate(SPLITS)}
        # A schema that arrives fitted (a checkpoint's, for evaluation) is used as it is.
        schema = self.declared_schema
        self.schema = schema if schema.fitted else schema_table.fit(schema, parts["train"], True)
        self.train_x, self.val_x, self.test_x = (
            schema_table.encode(self.schema, parts[s], valid=True) for s in SPLITS
        )
        self._ready = True

    def _valid_rows(self, table: Table) -> Table:
        """Table without optional columns that hold no value at all and, if drop_invalid,
        without rows holding an invalid value; else DataError naming them. One scan."""
        bad = schema_table.invalid_rows(self.declared_schema, table)
        empty = {name for name, mask in bad.items() if mask.all()}
        empty = {name for name in empty if self.declared_schema.feature(name).optional}
        if empty:  # schema fitting drops these features
            table = {name: col for name, col in table.items() if name not in empty}
            bad = {name: mask for name, mask in bad.items() if name not in empty}
        if not bad:
            return table
        n = len(table["step"])
        detail = ", ".join(f"{name}: {int(mask.sum())}" for name, mask in bad.items())
        any_bad = np.logical_or.reduce(list(bad.values()))
        if not self.drop_invalid:
            raise DataError(
                f"{int(any_bad.sum())} of {n} rows have {INVALID_VALUES} values (rows per column: "
                f"{detail}); fix the data or set data.drop_invalid=true to drop those rows"
            )
        if any_bad.all():
            raise DataError(
                f"all {n} rows have {INVALID_VALUES} values ({detail}); nothing is left"
            )
        log.info(
            "dropped %d of %d rows with %s values (%s)", any_bad.sum(), n, INVALID_VALUES, detail
        )
        return _take(table, ~any_bad)

    def _assign_splits(self, n_agents: int, kinds: np.ndarray | None = None) -> np.ndarray:
        """Split index (0 train, 1 val, 2 test) of each agent, from a seeded permutation.

        Test, then val agents are taken in permutation order, skipping an agent whose kind
        (``kinds``: e.g. its agent type) would otherwise be left without a training agent, so
        the vocabulary fitted on train covers every split. With many agents of every kind no
        agent is skipped and the split is the plain permutation's.
        """
        counts = {s: _agents_for(f, n_agents) for s, f in self.fractions.items()}
        if counts["val"] + counts["test"] >= n_agents:
            raise DataError(
                f"val_fraction={self.fractions['val']} and test_fraction={self.fractions['test']} "
                f"leave no training agents: the data has {n_agents} agent(s) and val/test need "
                f"{counts['val']}/{counts['test']}; lower the fractions or load more agents"
            )
        order = np.random.default_rng(self.split_seed).permutation(n_agents)
        kinds = np.zeros(n_agents, dtype=np.int64) if kinds is None else kinds
        left = np.bincount(kinds)  # agents of each kind still in train
        split = np.zeros(n_agents, dtype=np.int64)
        wanted = [2] * counts["test"] + [1] * counts["val"]
        for agent in order.tolist():
            if not wanted:
                break
            if left[kinds[agent]] > 1:
                split[agent] = wanted.pop(0)
                left[kinds[agent]] -= 1
        if wanted:
            raise DataError(
                f"cannot hold out {counts['test']} test and {counts['val']} val agents and keep "
                f"an agent of every agent type in training ({n_agents} agents, "
                f"{len(left)} types); lower the fractions or load more agents"
            )
        return split

    def _agent_kinds(self, table: Table, codes: np.ndarray) -> np.ndarray | None:
        """Per agent, the code of its first row's value of each per-agent categorical feature
        (``source: agents``, e.g. agent_type), combined; None when there is none."""
        names = [
            f.name
            for f in self.declared_schema.of_kind("categorical")
            if f.source == "agents" and f.name in table
        ]
        if not names:
            return None
        first = np.unique(codes, return_index=True)[1]  # codes are 0..n_agents-1
        combined = np.zeros(len(first), dtype=np.int64)
        for name in names:
            values = np.unique(np.asarray(table[name])[first].astype(str), return_inverse=True)[1]
            combined = combined * (int(values.max()) + 1) + values
        return np.unique(combined, return_inverse=True)[1]

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        """Shuffled (per ``(split_seed, epoch)``) batches of the training tensor."""
        x = self._split_tensor("train")
        sampler = EpochShuffleSampler(len(x), self.split_seed) if self.shuffle else None
        # A last batch of one state cannot train batch-norm layers: drop just that one.
        drop_last = len(x) % self.batch_size == 1
        if drop_last:
            log.info("training split of %d states: the last 1-state batch is dropped", len(x))
        return self._loader(x, self.batch_size, sampler, drop_last)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in order (under DDP: this rank's share, see ``_eval_loader``)."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches in order (under DDP: this rank's share, see ``_eval_loader``)."""
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        """The split's batches in order. Under DDP each rank takes every ``world_size``-th state
        and every state is evaluated exactly once: Lightning's default ``DistributedSampler``
        would pad a split that does not divide evenly by repeating states, counting them twice in
        the synced drift and rate. (Ranks may then run one batch fewer than others; evaluation
        has no per-batch collective, and DDP syncs buffers only on the first no-grad forward.)"""
        x = self._split_tensor(split)
        world = self.trainer.world_size if self.trainer is not None else 1
        if world == 1:
            return self._loader(x, self.eval_batch_size)
        if len(x) < world:
            raise DataError(
                f"the {split} split has {len(x)} states, fewer than the {world} DDP ranks that "
                "evaluate it: use more data or fewer trainer.devices"
            )
        rows = TensorRows(x)
        sampler = UnrepeatedDistributedSampler(
            rows, num_replicas=world, rank=self.trainer.global_rank, shuffle=False
        )
        return self._loader(x, self.eval_batch_size, sampler, dataset=rows)

    def predict_dataloader(self) -> DataLoader:
        """Test-split batches in order (what ``trainer.predict`` reconstructs)."""
        return self.test_dataloader()

    def rows(self, split: str) -> torch.Tensor:
        """The split as the model reads it: data tensor rows, with their context when set."""
        return self._split_tensor(split)

    def _split_tensor(self, split: str) -> torch.Tensor:
        if not self._ready:
            raise RuntimeError("call setup() before asking for a dataloader")
        x = getattr(self, f"{split}_x")
        if not self.context:
            return x
        built = self._rows.get(split)
        if built is None or built[0] is not x:  # built once per split tensor, not per loader
            grid = MeaningGrid(self.schema, 1) if self.context == "history" else None
            built = (x, with_previous(x, getattr(self, f"{split}_agents"), grid))
            self._rows[split] = built
        return built[1]

    def _loader(
        self,
        x: torch.Tensor,
        batch_size: int,
        sampler: Sampler | None = None,
        drop_last: bool = False,
        dataset: TensorRows | None = None,
    ) -> DataLoader:
        return DataLoader(
            TensorRows(x) if dataset is None else dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=collate_batch,
            num_workers=0,
            pin_memory=self._uses_cuda(),
        )

    def _uses_cuda(self) -> bool:
        if self.trainer is not None:
            return isinstance(self.trainer.accelerator, CUDAAccelerator)
        return torch.cuda.is_available()

    # ------------------------------------------------------------------ description
    def summary(self) -> str:
        """Rows and agents per split, and per-feature statistics in native units (all splits)."""
        self.setup()
        lines = ["split   rows        agents"]
        for s in SPLITS:
            lines.append(f"{s:<7} {len(self._split_tensor(s)):<11d} {len(self.split_agents[s])}")
        dropped = sorted(set(self.declared_schema.names) - set(self.schema.names))
        if dropped:
            lines.append(f"features dropped (optional, missing or constant): {dropped}")
        x = torch.cat([self.train_x, self.val_x, self.test_x])
        # Rounded to 1e-5 native units: float32 codes would show 1e-8 for an exact 0.
        native = np.round(SchemaLayout(self.schema).native(x).double().numpy(), 5)
        lines.append(f"{'feature':<20} {'kind':<12} statistics (native units)")
        for i, f in enumerate(self.schema.features):
            lines.append(f"{f.name:<20} {f.kind:<12} {_describe_column(native[:, i], f)}")
        return "\n".join(lines)


class SyntheticDataModule(AgentStateDataModule):
    """Agent states from the seeded synthetic generator."""

    def __init__(
        self,
        schema: FeatureSchema | Mapping[str, Any],
        num_states: int = 10000,
        seed: int = 0,
        num_agents: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(schema, **common)
        _check_positive_int("num_states", num_states)
        if num_agents is not None:
            _check_positive_int("num_agents", num_agents)
            if num_agents > num_states:
                raise ValueError(f"num_agents ({num_agents}) must be <= num_states ({num_states})")
        self.num_states = num_states
        self.seed = seed
        self.num_agents = num_agents

    def load_table(self) -> Table:
        """A synthetic table of ``num_states`` states."""
        return generate_synthetic(self.num_states, seed=self.seed, num_agents=self.num_agents)


class SQLiteDataModule(AgentStateDataModule):
    """Agent states read (read-only) from an AgentFarm ``simulation.db``."""

    def __init__(
        self,
        schema: FeatureSchema | Mapping[str, Any],
        path: str | Path = "simulation.db",
        step_range: Sequence[int] | None = None,
        agent_types: Sequence[str] | None = None,
        limit: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(schema, **common)
        self.path, self.step_range, self.agent_types = check_sqlite_args(
            path, step_range, agent_types, limit
        )
        self.limit = limit  # checked once, here: load_table reads with the checked arguments

    def load_table(self) -> Table:
        """The agent states of the database, filtered by step range, agent type and limit."""
        return read_sqlite(
            self.path, self.declared_schema, self.step_range, self.agent_types, self.limit
        )


# ---------------------------------------------------------------------- helpers
def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _agents_for(fraction: float, n_agents: int) -> int:
    """round(fraction * n_agents) agents (halves up), at least 1 when the fraction is > 0."""
    if fraction <= 0:
        return 0
    return max(1, int(np.floor(fraction * n_agents + 0.5)))


def agent_codes(table: Table) -> tuple[np.ndarray, np.ndarray]:
    """Per row, its agent's index into the sorted distinct agent ids; and those ids.

    Loaders that already dictionary-encoded the ids (SQLite) pass the codes as column
    ``agent`` (indices into the sorted ids); otherwise the ids are factorized here, once.
    """
    ids = table["agent_id"]
    if "agent" in table:  # renumbered: agents whose rows were all dropped leave gaps
        _, first, codes = np.unique(table["agent"], return_index=True, return_inverse=True)
        return codes, ids[first]
    if ids.dtype != object:
        uniques, codes = np.unique(ids, return_inverse=True)
        return codes, uniques
    uniques_list = sorted(set(ids.tolist()))
    index = {v: i for i, v in enumerate(uniques_list)}
    codes = np.fromiter((index[v] for v in ids.tolist()), dtype=np.int64, count=len(ids))
    uniques = np.empty(len(uniques_list), dtype=object)
    uniques[:] = uniques_list
    return codes, uniques


def _take(table: Table, mask: np.ndarray) -> Table:
    return {name: col[mask] for name, col in table.items()}


def _describe_column(values: np.ndarray, feature: Feature) -> str:
    if feature.kind == "continuous":
        return (
            f"mean {values.mean():.4g}  std {values.std():.4g}  "
            f"min {values.min():.4g}  max {values.max():.4g}"
        )
    names = feature.categories if feature.kind == "categorical" else ("0", "1")
    assert names is not None
    counts = np.bincount(values.astype(np.int64), minlength=len(names))
    return ", ".join(f"{name}: {n}" for name, n in zip(names, counts, strict=True))
