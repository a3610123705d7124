"""Config validation (before anything runs) and composing the config from Python."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from meaning_transform.errors import USER_ERRORS, ConfigError
from meaning_transform.kl_schedule import SCHEDULES
from meaning_transform.messages import one_line
from meaning_transform.rundir import NAME_RULE, is_plain_name


def _conf_dir() -> Path:
    """The configs: the repository's ``conf/`` in a source checkout (or editable install), else
    the copy a wheel carries as ``meaning_transform/conf`` (setup.py: one source, ``conf/``)."""
    checkout = Path(__file__).resolve().parents[2] / "conf"
    return checkout if (checkout / "train.yaml").is_file() else Path(__file__).parent / "conf"


CONF_DIR = _conf_dir()


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: reusable rules: (check, what is allowed)
POSITIVE = (lambda v: _num(v) and v > 0, "a number > 0")
NON_NEGATIVE = (lambda v: _num(v) and v >= 0, "a number >= 0")
COUNT = (lambda v: _int(v) and v >= 1, "an integer >= 1")
FRACTION = (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)")
FLAG = (lambda v: isinstance(v, bool), "true or false")

# key -> (check, what is allowed); keys absent from the composed config are skipped. These run
# before torch is imported (a typo answers in a fraction of a second); the constructors check
# the same values again when they build, for users of the Python classes.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: v is None or (_int(v) and v >= 0), "null or an integer >= 0"),
    "experiment_name": (is_plain_name, NAME_RULE),
    "torch_threads": (lambda v: v is None or (_int(v) and v >= 1), "null or an integer >= 1"),
    "compile": FLAG,
    "monitor.mode": (lambda v: v in ("min", "max"), "'min' or 'max'"),
    "model.latent_dim": COUNT,
    "model.hidden_dims": (
        lambda v: isinstance(v, Sequence) and all(_int(h) and h > 0 for h in v),
        "a list of integers > 0",
    ),
    "model.dropout": FRACTION,
    "model.context": (lambda v: v in (None, "previous", "history"), "null, previous or history"),
    "model.grid_path.enabled": FLAG,
    "model.grid_path.init_k": (lambda v: _num(v) and v >= 1, "a number >= 1"),
    "model.grid_path.learn_step": FLAG,
    "model.grid_path.init_scale": POSITIVE,
    "model.grid_path.density_lr_scale": POSITIVE,
    "compression.level": POSITIVE,
    "compression.num_embeddings": (lambda v: _int(v) and v >= 2, "an integer >= 2"),
    "compression.commitment_cost": NON_NEGATIVE,
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "trainer.max_epochs": COUNT,
    "scheduler.T_max": COUNT,
    "scheduler.eta_min": NON_NEGATIVE,
    "scheduler.step_size": COUNT,
    "scheduler.gamma": POSITIVE,
    "data.batch_size": COUNT,
    "data.num_states": COUNT,
    "data.val_fraction": FRACTION,
    "data.test_fraction": FRACTION,
    "loss.recon_weight": NON_NEGATIVE,
    "loss.kl_weight": NON_NEGATIVE,
    "loss.semantic_weight": NON_NEGATIVE,
    "loss.rate_weight": NON_NEGATIVE,
    "loss.huber_weight": NON_NEGATIVE,
    "loss.outside_weight": NON_NEGATIVE,
    "loss.sharpness": POSITIVE,
    "loss.semantic_margin": NON_NEGATIVE,
    "loss.kl_schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "callbacks.early_stopping.patience": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "callbacks.periodic_checkpoint.every_n_epochs": COUNT,
    "callbacks.curve_plotter.plot_every_n_epochs": COUNT,
}


def instantiate_checked(node: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with user mistakes reported as one line (the real reason)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, USER_ERRORS):
            raise cause from None
        msg = one_line(cause if cause is not None else e)
        raise ConfigError(f"{what}: {msg}") from None


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line: key, bad value, what is allowed) for the first bad value."""
    for key, (check, allowed) in RULES.items():
        node = OmegaConf.select(cfg, key, default="__absent__", throw_on_missing=False)
        if node == "__absent__":
            continue
        value = OmegaConf.to_object(node) if isinstance(node, DictConfig) else node
        if OmegaConf.is_list(value):
            value = OmegaConf.to_object(value)
        if not check(value):
            raise ConfigError(f"{key}={value!r} is invalid: expected {allowed}")
    target = str((cfg.get("compression") or {}).get("_target_"))
    if "IdentityBottleneck" in target and not cfg.model.get("variational", True):
        raise ConfigError(
            "compression=none with model.variational=false is invalid: the VAE rate "
            "KL(q(z|x)||p(z)) needs a variational encoder (set model.variational=true)"
        )
    monitor = str(OmegaConf.select(cfg, "monitor.metric", default=""))
    if OmegaConf.select(cfg, "data.val_fraction", default=None) == 0 and monitor.startswith("val/"):
        raise ConfigError(
            f"data.val_fraction=0 leaves no validation split, but monitor.metric={monitor!r} "
            "(checkpointing, early stopping, sweeps) is a validation metric: set "
            "data.val_fraction > 0"
        )
    for key in ("ckpt_path", "init_from"):
        path = cfg.get(key)
        if path is not None and not Path(str(path)).is_file():
            raise ConfigError(f"{key}={path!r} is invalid: no such checkpoint file")
    if cfg.get("ckpt_path") and cfg.get("init_from"):
        raise ConfigError(
            "ckpt_path and init_from are both set: use ckpt_path= to resume a run, "
            "or init_from= to start a new one from its weights, not both"
        )


#: the seed document's config attribute names -> this project's keys (Python API)
SEED_ALIASES = {
    "training.num_epochs": "trainer.max_epochs",
    "training.batch_size": "data.batch_size",
    "training.learning_rate": "optimizer.lr",
    "training.kl_loss_weight": "loss.kl_weight",
    "training.semantic_loss_weight": "loss.semantic_weight",
}


def apply_seed_aliases(cfg: DictConfig) -> DictConfig:
    """Copy values set under the seed's names onto the real keys, then drop the alias node."""
    aliases = cfg.get("training")
    if not isinstance(aliases, DictConfig):
        return cfg
    for alias, key in SEED_ALIASES.items():
        name = alias.split(".", 1)[1]
        if name in aliases and not OmegaConf.is_interpolation(aliases, name):
            OmegaConf.update(cfg, key, aliases[name], merge=False)
    with open_dict(cfg):
        del cfg["training"]
    return cfg


def check_accelerator(cfg: DictConfig) -> None:
    """ConfigError (one line) when the config asks for a GPU that this machine does not have."""
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    if accelerator not in ("gpu", "cuda"):
        return
    import torch  # here, not at module level: config checks run before torch is needed

    if not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator!r} (trainer=gpu) but this machine has no CUDA GPU "
            f"(torch {torch.__version__}): use trainer.accelerator=auto to take a GPU when there "
            "is one and the CPU otherwise, or trainer=cpu"
        )
