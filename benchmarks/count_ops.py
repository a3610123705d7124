"""How many ops a training step dispatches, by phase, by op and by source line.

The step is dispatch bound (each op costs a few microseconds whatever its size, see
docs/benchmarks.md, "Training throughput"), so its op count is the number to cut. Builds the
default model (``conf/``, or the overrides given) on synthetic data, runs a few plain optimizer
steps at ``--batch-size``, then counts one step's ops under a ``TorchDispatchMode``: per phase
(forward + losses, backward, Adam), the most frequent ops, the forward's ops per source line of ``meaning_transform`` and the
backward's per autograd node. Ops that a kernel calls inside itself (a Python scalar cast to a
tensor's dtype, say) are not seen; ``detach`` is partly an artifact of autograd saving tensors
under the mode.
"""

from __future__ import annotations

import argparse
import collections
import traceback
from pathlib import Path

import torch
from _step_model import step_model
from torch.utils._python_dispatch import TorchDispatchMode

from meaning_transform.console import quiet_libraries


class OpCounter(TorchDispatchMode):
    """Counts dispatched ops per (phase, op), forward ops per source line, backward per node."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.ops: collections.Counter = collections.Counter()
        self.lines: collections.Counter = collections.Counter()
        self.nodes: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket.__name__
        self.ops[(self.phase, name)] += 1
        if self.phase == "forward":
            ours = [f for f in traceback.extract_stack() if "meaning_transform" in f.filename]
            where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "(torch)"
            self.lines[(where, ours[-1].line if ours else "")] += 1
        elif self.phase == "backward":
            node = torch._C._current_autograd_node()
            self.nodes[node.name() if node is not None else "(engine)"] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    """Count one step's ops and print them."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. compression=vq")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--top", type=int, default=30, help="rows of each listing")
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(1)
    x, module, optimizer = step_model(5000, args.batch_size, args.overrides)
    b = args.batch_size
    counter = OpCounter()

    def step(i: int) -> None:
        counter.phase = "forward"
        total = module._step(x[i * b : (i + 1) * b], 0.5)[0]
        optimizer.zero_grad()
        counter.phase = "backward"
        total.backward()
        counter.phase = "optimizer"
        optimizer.step()

    for i in range(5):  # Adam's state exists, every lazy buffer is built
        step(i)
    with counter:
        step(5)
    phases: collections.Counter = collections.Counter()
    for (phase, _), n in counter.ops.items():
        phases[phase] += n
    print(f"ops per step at batch {b}: {sum(phases.values())} ({dict(phases)})")
    top = counter.ops.most_common(args.top)
    print("\ntop ops: " + ", ".join(f"{phase} {op} {n}" for (phase, op), n in top))
    print("\nforward ops by source line:")
    for (where, line), n in counter.lines.most_common(args.top):
        print(f"{n:5d}  {where:24s} {line}")
    print("\nbackward ops by autograd node:")
    for node, n in counter.nodes.most_common(args.top):
        print(f"{n:5d}  {node}")


if __name__ == "__main__":
    main()
