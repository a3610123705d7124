"""Temporal context: each state paired with the same agent's previous state (``model.context``).

A batch with context is one float32 tensor ``[B, 2F + 1]``: the state's data tensor (F columns),
the previous state's data tensor and a flag (1 when there is a previous state, 0 for an agent's
first state, whose previous columns are zeros). One tensor keeps batching an index operation
(see datamodule.TensorRows) and lets the training order be shuffled: a row carries its context.

Rows must be in (agent, step) order (the DataModule keeps them so); the previous state of a row
is the row before it when both belong to the same agent.
"""

from __future__ import annotations

import numpy as np
import torch

from meaning_transform.errors import ConfigError

#: values of ``model.context`` (None: no context)
CONTEXTS = ("previous",)


def check_context(context: str | None) -> str | None:
    """``context`` if it is None or one of CONTEXTS, else a one-line ConfigError."""
    if context is not None and context not in CONTEXTS:
        raise ConfigError(f"model.context={context!r} is invalid: expected null or one of {CONTEXTS}")
    return context


def has_previous(agents: np.ndarray) -> np.ndarray:
    """Per row, whether the row before it holds the same agent (rows grouped by agent)."""
    agents = np.asarray(agents)
    flag = np.zeros(len(agents), dtype=bool)
    flag[1:] = agents[1:] == agents[:-1]
    return flag


def with_previous(x: torch.Tensor, agents: np.ndarray) -> torch.Tensor:
    """Data tensor [N, F] in (agent, step) order -> ``[x | previous x | flag]`` [N, 2F + 1]."""
    if len(agents) != x.shape[0]:
        raise ValueError(f"{len(agents)} agent ids for {x.shape[0]} rows")
    flag = torch.from_numpy(has_previous(agents)).to(x.dtype)
    prev = torch.zeros_like(x)
    if x.shape[0] > 1:
        prev[1:] = x[:-1]
    prev = prev * flag[:, None]
    return torch.cat([x, prev, flag[:, None]], dim=1)


def split_batch(batch: torch.Tensor, num_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[x | previous | flag]`` -> (x [B, F], context [B, F + 1])."""
    if batch.shape[1] != 2 * num_features + 1:
        raise ValueError(
            f"model.context=previous needs batches of {2 * num_features + 1} columns (state, "
            f"previous state, flag), got {batch.shape[1]}: serve the data with data.context"
        )
    return batch[:, :num_features], batch[:, num_features:]


def context_input(schema, grid, context: torch.Tensor) -> torch.Tensor:
    """Network input of a context [B, F + 1]: the previous state snapped to the meaning grid
    (what a decoder of the grid state knows) in model-input layout, zeroed without a previous
    state, and the flag."""
    f = len(schema.features)
    prev, flag = context[:, :f], context[:, f:]
    snapped = grid.decode(grid.encode(prev)).to(prev)
    return torch.cat([schema.model_input(snapped) * flag, flag], dim=1)


def context_dim(schema) -> int:
    """Width of ``context_input``: the model input of a state plus the flag."""
    return int(schema.input_dim) + 1
