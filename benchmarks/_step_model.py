"""The model a step benchmark drives by hand: built from ``conf/`` as ``train.py`` builds it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from meaning_transform.api import load_config
from meaning_transform.assemble import prepare
from meaning_transform.module import MeaningModule


def step_model(
    states: int, batch_size: int, overrides: list[str]
) -> tuple[torch.Tensor, MeaningModule, torch.optim.Optimizer]:
    """(training tensor, module in training mode, its configured optimizer) of the default
    config on ``states`` synthetic states at ``batch_size``, plus ``overrides``."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            [
                f"data.num_states={states}",
                f"data.batch_size={batch_size}",
                f"paths.output_dir={Path(tmp) / 'p'}",
                *overrides,
            ]
        )
        _, datamodule, module, _ = prepare(cfg)
    optimizer = module.configure_optimizers()
    if isinstance(optimizer, dict):
        optimizer = optimizer["optimizer"]
    module.train()
    return datamodule.train_x, module, optimizer
