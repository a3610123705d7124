"""Temporal context: each state paired with the same agent's previous state (``model.context``).

A batch with context is one float32 tensor ``[B, 2F + 1]``: the state's data tensor (F columns),
the previous state's data tensor and a flag (1 when there is a previous state, 0 for an agent's
first state, whose previous columns are zeros). ``model.context=history`` (lossless models only)
adds F columns: per feature, for how many states the previous state's grid symbol has been
unchanged (``steps_unchanged``; 0 without a previous state). That is what tells a decoder *when*
a steady drift (age +1 per step, resources -0.15) crosses into the next grid cell, which the
previous state alone cannot. One tensor keeps batching an index operation
(see datamodule.TensorRows) and lets the training order be shuffled: a row carries its context.

Rows must be in (agent, step) order (the DataModule keeps them so); the previous state of a row
is the row before it when both belong to the same agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from meaning_transform.errors import ConfigError

if TYPE_CHECKING:
    from meaning_transform.grid import MeaningGrid
    from meaning_transform.schema.layout import SchemaLayout

#: values of ``model.context`` (None: no context)
CONTEXTS = ("previous", "history")


def check_context(context: str | None) -> str | None:
    """``context`` if it is None or one of CONTEXTS, else a one-line ConfigError."""
    if context is not None and context not in CONTEXTS:
        raise ConfigError(
            f"model.context={context!r} is invalid: expected null or one of {CONTEXTS}"
        )
    return context


def has_previous(agents: np.ndarray) -> np.ndarray:
    """Per row, whether the row before it holds the same agent (rows grouped by agent)."""
    agents = np.asarray(agents)
    flag = np.zeros(len(agents), dtype=bool)
    flag[1:] = agents[1:] == agents[:-1]
    return flag


def steps_unchanged(symbols: np.ndarray, flag: np.ndarray) -> np.ndarray:
    """Per row and feature (int64 [N, F]): for how many states the previous row's symbol had
    held, itself included (1: it had just changed, or was the agent's first); 0 without a
    previous row. Rows in (agent, step) order; ``flag``: row i - 1 is the same agent's."""
    n = len(flag)
    out = np.zeros(symbols.shape, dtype=np.int64)
    if n < 2:
        return out
    rows = np.arange(n)[:, None]
    change = np.ones(symbols.shape, dtype=bool)
    change[1:] = ~flag[1:, None] | (symbols[1:] != symbols[:-1])
    last = np.maximum.accumulate(np.where(change, rows, 0), axis=0)  # last change at or before
    out[1:] = (rows[:-1] - last[:-1] + 1) * flag[1:, None]
    return out


def next_steps_unchanged(
    prev: np.ndarray, prev2: np.ndarray, runs_prev: np.ndarray, flag_prev: np.ndarray
) -> np.ndarray:
    """``steps_unchanged`` of rows whose previous row (symbols ``prev``, its own count
    ``runs_prev``, whether it had a previous row ``flag_prev``, that row's symbols ``prev2``)
    is known: the decoder's recursion, equal to the closed form above."""
    same = flag_prev[:, None] & (prev == prev2)
    return np.where(same, runs_prev + 1, 1)


def with_previous(x: torch.Tensor, agents: np.ndarray, grid: Any = None) -> torch.Tensor:
    """Data tensor [N, F] in (agent, step) order -> ``[x | previous x | flag]`` [N, 2F + 1];
    with a MeaningGrid (``history``) also each feature's ``steps_unchanged`` [N, 3F + 1]."""
    if len(agents) != x.shape[0]:
        raise ValueError(f"{len(agents)} agent ids for {x.shape[0]} rows")
    has = has_previous(agents)
    flag = torch.from_numpy(has).to(x.dtype)
    prev = torch.zeros_like(x)
    if x.shape[0] > 1:
        prev[1:] = x[:-1]
    prev = prev * flag[:, None]
    parts = [x, prev, flag[:, None]]
    if grid is not None:
        parts.append(torch.from_numpy(steps_unchanged(grid.encode(x), has)).to(x.dtype))
    return torch.cat(parts, dim=1)


def context_width(num_features: int, context: str | None) -> int:
    """Columns of a context: previous state and flag (+ one count per feature for history)."""
    return (
        0 if context is None else num_features + 1 + (num_features if context == "history" else 0)
    )


def split_batch(
    batch: torch.Tensor, num_features: int, context: str = "previous"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[x | previous | flag (| counts)]`` -> (x [B, F], context [B, context_width])."""
    width = num_features + context_width(num_features, context)
    if batch.shape[1] != width:
        raise ValueError(
            f"model.context={context} needs batches of {width} columns (state, previous state, "
            f"flag{', counts' if context == 'history' else ''}), got {batch.shape[1]}: serve "
            "the data with data.context"
        )
    return batch[:, :num_features], batch[:, num_features:]


def context_input(layout: SchemaLayout, grid: MeaningGrid, context: torch.Tensor) -> torch.Tensor:
    """Network input of a context [B, F + 1]: the previous state snapped to the meaning grid
    (what a decoder of the grid state knows) in model-input layout, zeroed without a previous
    state, and the flag."""
    f = len(layout.schema.features)
    prev, flag = context[:, :f], context[:, f:]
    snapped = grid.decode(grid.encode(prev)).to(prev)
    return torch.cat([layout.model_input(snapped) * flag, flag], dim=1)


def context_dim(schema) -> int:
    """Width of ``context_input``: the model input of a state plus the flag."""
    return int(schema.input_dim) + 1
