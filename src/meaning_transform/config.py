"""Config validation (before anything runs) and composing the config from Python."""

from __future__ import annotations

import difflib
import math
import os
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
#: most states per .mtc chunk (a chunk is decoded in memory at once)
MAX_CHUNK = 1 << 18
#: what codes a codec file's agent states without a checkpoint (``codec.model.choose_model``)
CODERS = ("auto", "adaptive", "packaged", "fit")
#: model.activation: element-wise torch.nn activations (a name is looked up in torch.nn, so
#: only these: any other torch.nn class would be built with no arguments)
ACTIVATIONS = (
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
    "Tanh", "Sigmoid", "Softplus", "Softsign", "Hardtanh", "Hardswish", "Hardsigmoid",
    "LogSigmoid", "Tanhshrink", "Identity",
)  # fmt: skip

# key -> (check, what is allowed); keys absent from the composed config are skipped. These run
# before torch is imported (a typo answers in a fraction of a second); the constructors check
# the same values again when they build, for users of the Python classes.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (
        lambda v: v is None or (_int(v) and 0 <= v < 2**32),
        "null or an integer in [0, 2**32)",
    ),
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
    "model.activation": (lambda v: v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
    "model.max_bins": (lambda v: _int(v) and v >= 2, "an integer >= 2"),
    "model.basis": COUNT,
    "model.delta_window": COUNT,
    "model.span_std": POSITIVE,
    "model.context": (lambda v: v in (None, "previous", "history"), "null, previous or history"),
    "model.grid_path.enabled": FLAG,
    "model.grid_path.init_k": (lambda v: _num(v) and v >= 1, "a number >= 1"),
    "model.grid_path.learn_step": FLAG,
    "model.grid_path.init_scale": POSITIVE,
    "model.grid_path.density_lr_scale": POSITIVE,
    "model.grid_path.prior_mixture": FLAG,
    "compression.level": POSITIVE,
    "compression.num_embeddings": (lambda v: _int(v) and v >= 2, "an integer >= 2"),
    "compression.commitment_cost": NON_NEGATIVE,
    "compression.usage_weight": NON_NEGATIVE,
    "compression.usage_temperature": POSITIVE,
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
    "objective_beta": (lambda v: v is None or (_num(v) and v >= 0), "null or a number >= 0"),
    # evaluate and codec commands
    "overwrite": FLAG,
    "embed_model": FLAG,
    "fit_seconds": NON_NEGATIVE,
    "coder": (lambda v: v in CODERS, f"one of {', '.join(CODERS)}"),
    "chunk_size": (lambda v: _int(v) and 1 <= v <= MAX_CHUNK, f"an integer in 1..{MAX_CHUNK}"),
    "trusted_targets": (
        lambda v: isinstance(v, Sequence) and all(isinstance(t, str) and "." in t for t in v),
        "a list of dotted class paths (package.module.Class)",
    ),
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


def _non_finite(node: Any, key: str = "") -> str | None:
    """The first key whose literal value is NaN or infinite (interpolations are not resolved)."""
    if isinstance(node, DictConfig):
        for k in node:
            if OmegaConf.is_interpolation(node, str(k)) or OmegaConf.is_missing(node, str(k)):
                continue
            found = _non_finite(node[k], f"{key}.{k}" if key else str(k))
            if found:
                return found
    elif OmegaConf.is_list(node):
        for i in range(len(node)):
            if not OmegaConf.is_interpolation(node, i):
                found = _non_finite(node[i], f"{key}[{i}]")
                if found:
                    return found
    elif isinstance(node, float) and not math.isfinite(node):
        return key
    return None


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line: key, bad value, what is allowed) for the first bad value."""
    bad = _non_finite(cfg)
    if bad:
        value = OmegaConf.select(cfg, bad)
        raise ConfigError(f"{bad}={value} is invalid: NaN and infinite values are not allowed")
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
    check_monitor(cfg)
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


#: metrics every run logs under each of train/, val/, test/ (module.py, metrics.py, baselines.py)
_METRICS = (
    "loss", "rate_bits", "rate_bits_latent", "rate_bits_grid", "drift", "preservation",
    "rate_drift", "codes_used", "perplexity", "fixed_rate_bits", "bits_over_classical",
    "classical/quantizer_bits", "classical/delta_bits", "classical/bits_at_drift",
)  # fmt: skip


def metric_names(cfg: DictConfig) -> set[str]:
    """The names (without stage) a run of ``cfg`` can log: fixed ones, the loss terms (and
    their weights), and per feature, predicate and group of the schema."""
    names = set(_METRICS)
    terms = OmegaConf.select(cfg, "loss.terms", default=None) or {}
    for term in terms:
        names |= {str(term), f"weight/{term}"}
    schema = cfg.get("schema") or {}
    features = list((schema.get("features") or {}).keys())
    predicates = list((schema.get("predicates") or {}).keys())
    groups = {
        str((spec or {}).get("group", "other")) for spec in (schema.get("features") or {}).values()
    }
    groups |= {
        str((spec or {}).get("group", "predicates"))
        for spec in (schema.get("predicates") or {}).values()
    }
    for name in [*features, *predicates]:
        names |= {f"drift/{name}", f"mae/{name}", f"grid_k/{name}"}
    for group in groups:
        names |= {f"drift_group/{group}", f"preservation_group/{group}"}
    return names


def check_monitor(cfg: DictConfig) -> None:
    """ConfigError when ``monitor.metric`` is not a metric the run logs (a typo would only fail
    after the first epoch, or silently never checkpoint)."""
    metric = OmegaConf.select(cfg, "monitor.metric", default=None)
    if metric is None or cfg.get("schema") is None:
        return
    stage, _, name = str(metric).partition("/")
    known = metric_names(cfg)
    if stage not in ("train", "val", "test") or name not in known:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean {stage}/{close[0]}?" if close else ""
        raise ConfigError(
            f"monitor.metric={metric!r} is invalid: expected <train|val|test>/<metric>, a "
            f"metric the run logs (e.g. val/loss, val/drift, val/rate_bits){hint}"
        )


def check_paths(cfg: DictConfig) -> None:
    """ConfigError when a folder the run writes to is a file or cannot be created or written
    (``paths.log_dir``, ``paths.output_dir``, and any literal ``callbacks.*.dirpath``)."""
    candidates = []
    for key in ("paths.log_dir", "paths.output_dir"):
        try:
            value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=True)
        except Exception:  # noqa: BLE001 - a resolver only Hydra's run knows: checked later
            continue
        if value:
            candidates.append((key, value))
    for name, node in (cfg.get("callbacks") or {}).items():
        literal = isinstance(node, DictConfig) and "dirpath" in node
        if literal and not OmegaConf.is_interpolation(node, "dirpath") and node.dirpath:
            candidates.append((f"callbacks.{name}.dirpath", node.dirpath))
    for key, value in candidates:
        problem = _unwritable(Path(str(value)).expanduser())
        if problem:
            raise ConfigError(f"{key}={str(value)!r} is invalid: {problem}")


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot be used to write into, or None."""
    if folder.exists() and not folder.is_dir():
        return "it is a file, not a folder"
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return "no part of it exists"
        probe = probe.parent
    if not probe.is_dir():
        return f"{str(probe)!r} is a file, not a folder"
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        return f"{str(probe)!r} is on a read-only file system"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{str(probe)!r} is not writable"
    return None
