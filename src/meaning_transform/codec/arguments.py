"""``meaning-codec compress run.db run.mtc``: positional arguments as the overrides they name.

After the command, an argument without ``=`` is a path that stands for the override its position
names (``POSITIONAL``); ``key=value`` arguments are Hydra overrides as before, so
``meaning-codec compress run.db run.mtc ckpt_path=best.ckpt`` is
``compress data.path=run.db out=run.mtc ckpt_path=best.ckpt``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from meaning_transform.errors import ConfigError

#: per command, the keys its positional arguments give, in order
POSITIONAL = {
    "compress": ("data.path", "out"),
    "decompress": ("in", "out"),
    "verify": ("in", "data.path"),
}

USAGE = """\
usage: meaning-codec compress DB OUT [key=value ...]     (= data.path=DB out=OUT)
       meaning-codec decompress IN OUT [key=value ...]   (= in=IN out=OUT)
       meaning-codec verify IN DB [key=value ...]        (= in=IN data.path=DB)
       (also: python -m meaning_transform.codec ...)
Bad input: one line on stderr, exit code 2; verify finding a difference: exit code 1."""


def hydra_quoted(value: str) -> str:
    """``value`` as a quoted Hydra override value that composes to exactly ``value``."""
    # In Hydra's quoted strings a backslash escapes only a quote (or the backslashes before
    # one, or before the closing quote); ``${`` would start an OmegaConf interpolation.
    value = re.sub(r"(\\*)(?='|$)", lambda m: m.group(1) * 2, value)
    return "'" + value.replace("'", "\\'").replace("${", "\\${") + "'"


def positional_overrides(command: str, args: Sequence[str]) -> list[str]:
    """``args`` with each argument that has no ``=`` turned into ``<key>=<it>`` by position."""
    keys = POSITIONAL[command]
    positional = [a for a in args if "=" not in a]
    if len(positional) > len(keys):
        raise ConfigError(
            f"{command} takes at most {len(keys)} paths ({' and '.join(keys)}), got "
            f"{len(positional)}: {' '.join(positional)}"
        )
    named = {a.split("=", 1)[0].lstrip("+") for a in args if "=" in a}
    out, position = [], iter(keys)
    for arg in args:
        if "=" in arg:
            out.append(arg)
            continue
        key = next(position)
        if key in named:
            raise ConfigError(f"{key} is given twice: as {arg!r} and as {key}=...; give it once")
        out.append(f"{key}={hydra_quoted(arg)}")
    return out
