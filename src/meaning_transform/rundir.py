"""Run directories: one plain folder name per experiment, and a fresh folder for every run.

``unique_dir`` creates the folder itself (``mkdir`` without ``exist_ok``), so two runs started in
the same second get ``<stamp>`` and ``<stamp>_1``, never the same folder. The CLI uses it through
the ``mt_run_dir`` resolver in ``conf/hydra/default.yaml`` (cached, so Hydra and every multirun job
see the one folder it created); the Python API calls it directly.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from meaning_transform.errors import ConfigError

#: a single path component: no separators, not "." or "..", no leading "-"
_NAME = re.compile(r"(?!\.+$)[\w.+=][\w.+=-]*")
MAX_NAME = 100
NAME_RULE = (
    f"one folder name of at most {MAX_NAME} letters, digits, '_', '-', '.', '+', '=' "
    "(not '.' or '..')"
)


def is_plain_name(name: object) -> bool:
    """True when ``name`` can name a folder directly under ``outputs/``."""
    return isinstance(name, str) and len(name) <= MAX_NAME and _NAME.fullmatch(name) is not None


def check_experiment_name(name: object) -> str:
    """``name`` if it is a plain folder name, else ConfigError (it must not escape outputs/)."""
    if not is_plain_name(name):
        raise ConfigError(f"experiment_name={name!r} is invalid: expected {NAME_RULE}")
    return str(name)


def timestamp() -> str:
    """The local time as the run folder name: ``YYYY-MM-DD_HH-MM-SS``."""
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def unique_dir(parent: str | Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``parent/name_1``, ``_2``, ... if it exists."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        path = parent / (name if n == 0 else f"{name}_{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def new_run_dir(log_dir: str | Path, experiment_name: str, *sub: str) -> str:
    """A new ``log_dir/<experiment_name>/<sub...>/<timestamp>[_n]`` folder (created)."""
    parent = Path(log_dir, check_experiment_name(experiment_name), *sub)
    return str(unique_dir(parent, timestamp()))


def register_resolver() -> None:
    """Register ``${mt_run_dir:log_dir,experiment_name[,sub]}`` (cached: one folder per config)."""
    if not OmegaConf.has_resolver("mt_run_dir"):
        OmegaConf.register_new_resolver("mt_run_dir", new_run_dir, use_cache=True)


register_resolver()
