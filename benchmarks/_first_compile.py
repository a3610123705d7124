"""Seconds of the first ``compile=true`` training step (compiling it), in a fresh process.

Run by ``train_throughput.py --compile`` twice per batch size with one ``TORCHINDUCTOR_CACHE_DIR``:
cold (the cache empty) and warm (what the first run left). Arguments: states, batch size, the
JSON file to write, Hydra overrides.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from meaning_transform.api import load_config
from meaning_transform.assemble import prepare
from meaning_transform.console import quiet_libraries


def main() -> None:
    """Build the model as the benchmark does, time its first compiled step, write the JSON."""
    states, batch_size, out, *overrides = sys.argv[1:]
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            [
                f"data.num_states={states}",
                f"data.batch_size={batch_size}",
                f"paths.output_dir={Path(tmp) / 'p'}",
                *overrides,
                "compile=true",
            ]
        )
        _, datamodule, module, _ = prepare(cfg)
    module.train()
    start = time.perf_counter()
    module._step(datamodule.train_x[: int(batch_size)], 0.0)[0].backward()
    Path(out).write_text(json.dumps({"first_step_s": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
