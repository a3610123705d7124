"""A callback for benchmarks/startup.py, imported only by the ``train.py`` it starts."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import psutil
from lightning.pytorch.callbacks import Callback


class FirstStep(Callback):
    """When the first training batch starts: write seconds since process start and RSS, stop."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        """Record, and end the run after this step."""
        proc = psutil.Process()
        record = {
            "seconds_since_start": time.time() - proc.create_time(),
            "rss_mib": proc.memory_info().rss / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        Path(self.path).write_text(json.dumps(record))
        trainer.should_stop = True
