"""``compile=true``: the training step (forward, losses, their backward) under ``torch.compile``.

Only the steady state is compiled: training-mode calls with gradients on and the first training
batch's number of rows, as one static-shape graph (``dynamic=False``). Every other call runs the
eager step: the epoch's shorter last batch, validation and test (eval mode, no gradients, larger
batches). Compiling those too costs a graph each (a dynamic-shape one for the last batch, one
per eval mode) for a few steps per epoch. The step's inputs are tensors only
(``MeaningModule._loss_step`` takes the loss weights as a tensor), so nothing that changes from
step to step recompiles it. Lightning's loop and the (fused) optimizer step stay eager; the
backward is compiled with the forward (AOTAutograd).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: torch.compile's backend (the tests set "eager": dynamo's graph capture without inductor)
BACKEND = "inductor"


class CompiledStep:
    """``module._loss_step``, compiled for full training batches, eager otherwise.

    The compiled function is the class's (the module is an argument), so a deep copy of the
    module (the benchmarks train copies) steps its own parameters, and every module of one
    class and config shares one compiled graph.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.eager: Callable[..., Any] = type(module)._loss_step
        self.compiled = torch.compile(self.eager, dynamic=False, backend=BACKEND)
        self.rows: int | None = None  # a full training batch's rows (the first one's)

    def __call__(self, batch: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The compiled step for a full training batch, else the eager one."""
        step = self.eager
        if self.module.training and torch.is_grad_enabled():
            if self.rows is None:
                self.rows = batch.shape[0]
            if batch.shape[0] == self.rows:
                step = self.compiled
        return step(self.module, batch, weights)


def compile_step(module: torch.nn.Module) -> None:
    """Make ``module``'s training step a :class:`CompiledStep` (``compile=true``).

    Also lets AOTAutograd's on-disk cache keep graphs with a custom ``autograd.Function``
    (the entropy bottleneck's ``_LowerBound``; its forward and backward are traced into the
    graph, so they are part of the cache key): without it the cache is bypassed and a warm
    start re-traces forward and backward (measured 7-11 s instead of 4-7 s).
    """
    torch._functorch.config.autograd_cache_allow_custom_autograd_functions = True
    module._loss_step = CompiledStep(module)
