"""``compile=true``: the training step is captured as one graph, once, for a whole run.

With dynamo's ``eager`` backend (graph capture without inductor's minutes of C++ compiling): what
is tested is that nothing in the step breaks the graph or recompiles it; inductor's speed is
measured by benchmarks/train_throughput.py --compile.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from meaning_transform import compile_step
from meaning_transform.training import run

pytestmark = pytest.mark.slow


def test_a_compiled_run_captures_the_step_once(tiny_cfg, monkeypatch):
    """A KL weight that changes every step, a shorter last batch, validation and test: one
    frame compiled, one graph, no graph break, no recompile."""
    monkeypatch.setattr(compile_step, "BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    result = run(tiny_cfg("compile=true", "model.variational=true", "loss.kl_schedule=linear"))
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["frames"]["total"] == 1  # a recompile would count a second frame
    assert not counters["graph_break"]
    assert result["history"] and result["test"]
