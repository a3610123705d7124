"""Where benchmark scripts write their JSON results (benchmarks/results/, git-ignored)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Write ``results`` to benchmarks/results/<name>.json and say so."""
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def new_results(args: Any) -> dict[str, Any]:
    """A results dict: the machine (torch threads, platform), the arguments, no data yet."""
    import torch

    return {
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
        "args": vars(args),
        "data": {},
    }
