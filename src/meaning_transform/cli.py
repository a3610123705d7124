"""Entry-point checks: Hydra-level mistakes become one line and exit code 2, before any work.

``preflight(argv)`` runs in ``train.py`` before ``hydra.main`` (and before torch or Lightning are
imported): it rejects unknown ``--flags`` (``--experiment x`` is not Hydra's ``--experimental-rerun``),
composes the config with the command line's overrides (each value of a ``-m`` sweep in turn) and
checks ``experiment_name``, so a typo never leaves a run directory or a traceback behind.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from meaning_transform.config import CONF_DIR, check_paths, validate_config
from meaning_transform.errors import ConfigError
from meaning_transform.messages import few, one_line
from meaning_transform.rundir import check_experiment_name

#: the seed CLI's flags and the overrides that replace them (README: Options)
SEED_FLAGS = {
    "--experiment": "experiment_name",
    "--compression": "compression",
    "--compression-level": "compression.level",
    "--epochs": "trainer.max_epochs",
    "--batch-size": "data.batch_size",
    "--latent-dim": "model.latent_dim",
    "--learning-rate": "optimizer.lr",
    "--use-real-data": "data=sqlite data.path=PATH",
    "--num-states": "data.num_states",
    "--resume": "ckpt_path",
    "--gpu": "trainer=gpu",
    "--debug": "debug=limit",
}
#: Hydra flags after which composing the config here would be wrong or pointless
_HANDS_OFF = {
    "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun", "--shell-completion",
    "-sc", "-h", "--help", "-hh", "--hydra-help", "--version", "-i", "--info",
}  # fmt: skip


def _hydra_options() -> dict[str, bool]:
    """Each Hydra command-line option and whether it takes a value."""
    options = {}
    for action in get_args_parser()._actions:
        for flag in action.option_strings:
            options[flag] = action.nargs != 0
    return options


def split_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, str | None]]:
    """(overrides, Hydra flags); ConfigError for a flag Hydra does not have (no abbreviations)."""
    options = _hydra_options()
    overrides: list[str] = []
    flags: dict[str, str | None] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        flag, _, inline = arg.partition("=")
        if flag not in options:
            raise ConfigError(_unknown_flag(flag, inline or (args[0] if args else "")))
        value = inline or (args.pop(0) if options[flag] and args else None)
        flags[flag] = value
    return overrides, flags


def _unknown_flag(flag: str, value: str) -> str:
    seed = SEED_FLAGS.get(flag)
    if seed is not None:
        takes_value = "=" not in seed and value and not value.startswith("-")
        example = f"{seed}={value}" if takes_value else seed if "=" in seed else f"{seed}=..."
        return (
            f"{flag} is not an option of train.py: settings are key=value overrides, "
            f"here {example} (README: Options)"
        )
    return (
        f"{flag} is not an option of train.py: settings are key=value overrides such as "
        f"experiment_name=x; Hydra's options: {', '.join(sorted(_hydra_options()))}"
    )


def compose_checked(
    config_name: str, overrides: Sequence[str], return_hydra_config: bool = False
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides``; ConfigError (one line) if Hydra can't."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="check"):
        try:
            return compose(config_name, list(overrides), return_hydra_config=return_hydra_config)
        except HydraException as e:
            raise ConfigError(explain(e, config_name, overrides)) from None


def explain(error: HydraException, config_name: str, overrides: Sequence[str]) -> str:
    """One line for a Hydra composition error: the override, what is wrong, the choices."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, choice = str(error.missing_cfg_file).rpartition("/")
        if group:
            options = ", ".join(error.options or []) or "none"
            return f"{group}={choice}: no such option; choices: {options}"
    quoted = re.search(r"Could not (?:override|delete from config\.) '([^']+)'", str(error))
    if quoted is not None and "is already at" not in str(error):
        key = quoted.group(1)
        given = next((o for o in overrides if o.lstrip("+~").split("=")[0] == key), key)
        return f"{given}: no such key{_key_choices(key, config_name, overrides, given)}"
    if isinstance(error, OverrideParseException):
        for o in overrides:
            try:
                OverridesParser.create().parse_overrides([o])
            except OverrideParseException as e:
                return f"{o}: cannot parse this override ({one_line(e)})"
    if "Ambiguous value" in str(error):
        return f"{one_line(error)}: write key=[a,b] for a list, or add -m to sweep over the values"
    return f"{one_line(error)} (in {' '.join(overrides) or 'the defaults'})"


def _key_choices(key: str, config_name: str, overrides: Sequence[str], given: str) -> str:
    """'; did you mean X? keys under P: ...' from the config composed without the bad override."""
    try:
        cfg = compose(config_name, [o for o in overrides if o != given], return_hydra_config=True)
    except HydraException:
        return ""
    parent, _, _ = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return ""
    keys = sorted(str(k) for k in node if parent or k != "hydra")
    close = difflib.get_close_matches(key.rpartition(".")[2], keys, n=1)
    guess = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
    where = f"under {parent}" if parent else "at the top level"
    return f"{guess} (keys {where}: {few(keys, 12)})"


def sweep_variants(overrides: Sequence[str]) -> list[list[str]]:
    """Override lists that together use every value of every sweep (one sweep varied at a time)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    choices: list[list[str]] = []
    for o in parsed:
        if not o.is_sweep_override():
            choices.append([o.input_line])
            continue
        try:
            values = [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        except Exception:  # noqa: BLE001 - e.g. interval(): the sweeper samples it, skip here
            values = []
        choices.append(values)
    base = [c[0] for c in choices if c]
    variants = [base]
    for i, values in enumerate(c for c in choices if c):
        for v in values[1:]:
            variants.append([*base[:i], v, *base[i + 1 :]])
    return variants


def check_args(argv: Sequence[str], config_name: str = "train") -> None:
    """ConfigError (one line) for a command line that Hydra would reject or run outside outputs/."""
    overrides, flags = split_argv(argv)
    if _HANDS_OFF & set(flags):
        return
    name = flags.get("-cn") or flags.get("--config-name") or config_name
    multirun = "-m" in flags or "--multirun" in flags
    try:
        variants = sweep_variants(overrides) if multirun else [overrides]
    except HydraException as e:
        raise ConfigError(f"{one_line(e)} (in {' '.join(overrides)})") from None
    for variant in variants:
        cfg = compose_checked(name, variant)
        if "experiment_name" in cfg:
            check_experiment_name(cfg.experiment_name)
        check_paths(cfg)
        # Bad values too, before torch and Lightning are imported. Not in a multirun: there a
        # job with a bad value fails on its own (failed.json) and the sweep goes on.
        if name == config_name and not multirun:
            validate_config(cfg)


#: what asks a command for its help text
HELP_FLAGS = {"-h", "--help"}


def config_help(config_name: str, usage: str) -> str:
    """``usage``, the config groups ``conf/<config_name>.yaml`` composes with their options, and
    the file itself (its keys, defaults and comments): a command's ``--help``."""
    cfg = compose_checked(config_name, [], return_hydra_config=True)
    groups = sorted(str(g) for g in cfg.hydra.runtime.choices if not str(g).startswith("hydra"))
    lines = [usage, "", "== Configuration groups (group=option) =="]
    for group in groups:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        lines.append(f"{group}: {', '.join(options)}")
    if not groups:
        lines.append("(none)")
    path = CONF_DIR / f"{config_name}.yaml"
    lines += ["", f"== {path.name}: override any key with key=value ==", path.read_text().rstrip()]
    return "\n".join(lines)


def preflight(argv: Sequence[str], config_name: str = "train") -> None:
    """``check_args``, reporting a problem as ``error: <one line>`` on stderr and exit code 2."""
    try:
        check_args(argv, config_name)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        GlobalHydra.instance().clear()
