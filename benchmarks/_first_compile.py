"""Seconds of the first ``compile=true`` training step (compiling it), in a fresh process.

Run by ``train_throughput.py --compile`` twice per batch size with one ``TORCHINDUCTOR_CACHE_DIR``:
cold (the cache empty) and warm (what the first run left). Arguments: states, batch size, the
JSON file to write, Hydra overrides.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from _step_model import step_model

from meaning_transform.console import quiet_libraries


def main() -> None:
    """Build the model as the benchmark does, time its first compiled step, write the JSON."""
    states, batch_size, out, *overrides = sys.argv[1:]
    quiet_libraries()
    x, module, _ = step_model(int(states), int(batch_size), [*overrides, "compile=true"])
    start = time.perf_counter()
    module._step(x[: int(batch_size)], 0.0)[0].backward()
    Path(out).write_text(json.dumps({"first_step_s": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
