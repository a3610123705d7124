"""Train a meaning-preserving code: ``meaning-train [group=option] [key=value] ...``.

The console command pip installs, ``python -m meaning_transform.train`` and the repository's
``python train.py`` all run ``main``: ``cli.preflight`` (a bad command line is one line and exit
code 2, before torch loads), then Hydra with the package's configs (``config.CONF_DIR``), so the
same overrides, ``-m`` multiruns and ``--help`` work from any folder. Runs land in
``outputs/`` under the current folder (``train.py`` sets ``MEANING_TRANSFORM_ROOT`` to its own).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from meaning_transform.cli import preflight
from meaning_transform.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``optimized_metric`` for sweepers."""
    # imported here: --cfg, --help and bad overrides answer without torch and Lightning (~3 s)
    from meaning_transform.training import main_entry

    return main_entry(cfg)


def main() -> None:
    """Check the command line, then train (or sweep) as Hydra is told."""
    preflight(sys.argv[1:])  # a bad command line: one line, exit 2, nothing written
    _hydra_main()


if __name__ == "__main__":
    main()
