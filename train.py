"""Train a meaning-preserving code: ``python train.py [group=option] [key=value] ...``."""

import os
import sys
from pathlib import Path

os.environ.setdefault("MEANING_TRANSFORM_ROOT", str(Path(__file__).resolve().parent))

from meaning_transform.cli import preflight  # noqa: E402  (light: no torch, no Lightning)

if __name__ == "__main__":
    preflight(sys.argv[1:])  # a bad command line: one line, exit 2, nothing written

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``optimized_metric`` for sweepers."""
    # imported here: --cfg, --help and bad overrides answer without torch and Lightning (~3 s)
    from meaning_transform.training import main_entry

    return main_entry(cfg)


if __name__ == "__main__":
    main()
