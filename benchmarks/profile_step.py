"""Where a training step's time goes: torch profiler over the project module's step.

Builds the default model (``conf/``, or the overrides given) on synthetic data, runs ``--warmup``
then ``--steps`` plain optimizer steps (forward, losses, backward, Adam) at ``--batch-size`` under
``torch.profiler``, prints the top ops by self CPU time and writes
benchmarks/results/profile_step.json. ``--compile`` also times the step under ``torch.compile``
(``compile=true``): compile seconds, then compiled and eager ms per step.
"""

from __future__ import annotations

import argparse
import time

import torch
from _results import write_results
from _step_model import step_model
from torch.profiler import ProfilerActivity, profile, record_function

from meaning_transform.compile_step import compile_step
from meaning_transform.console import quiet_libraries


def main() -> None:
    """Profile, print the top ops, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. compression=vq")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd step")
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    x, module, optimizer = step_model(20000, args.batch_size, args.overrides)
    b = args.batch_size

    def step(i: int) -> None:
        batch = x[(i * b) % (x.shape[0] - b) :][:b]
        with record_function("forward+loss"):
            total = module._step(batch, 0.5)[0]
        optimizer.zero_grad()
        with record_function("backward"):
            total.backward()
        with record_function("optimizer"):
            optimizer.step()

    for i in range(args.warmup):
        step(i)
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    plain_s = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(args.steps):
            step(i)
    compiled = None
    if args.compile:
        compile_step(module)  # what compile=true does in assemble.prepare
        start = time.perf_counter()
        for i in range(3):
            step(i)
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(args.steps):
            step(i)
        compiled_ms = (time.perf_counter() - start) / args.steps * 1000
        del module._loss_step  # the class's eager step again
        start = time.perf_counter()
        for i in range(args.steps):
            step(i)
        eager_ms = (time.perf_counter() - start) / args.steps * 1000
        compiled = {"compile_s": compile_s, "compiled_ms": compiled_ms, "eager_ms": eager_ms}
        print(
            f"torch.compile: {compile_s:.0f} s to compile; {compiled_ms:.2f} ms per step "
            f"compiled vs {eager_ms:.2f} eager (interleaved after it)"
        )
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
    print(table)
    rows = [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1000,
            "cpu_total_ms": e.cpu_time_total / 1000,
        }
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.top]
    ]
    per_step_ms = plain_s / args.steps * 1000
    print(f"{per_step_ms:.2f} ms per step unprofiled ({b / per_step_ms * 1000:,.0f} states/s)")
    write_results(
        "profile_step",
        {
            "overrides": args.overrides,
            "batch_size": b,
            "steps": args.steps,
            "ms_per_step": per_step_ms,
            "top_ops": rows,
            "compile": compiled,
        },
    )


if __name__ == "__main__":
    main()
