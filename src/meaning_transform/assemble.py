"""Building a run from its config: the Trainer with its callbacks and loggers, the DataModule,
the MeaningModule (fresh, resumed or initialized from a checkpoint) and its lineage.

Nothing here writes to disk: bad input raises one of ``USER_ERRORS`` before any work starts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from meaning_transform.callbacks.checkpoint import AtomicCheckpointIO
from meaning_transform.callbacks.history import MetricsHistory, find_history
from meaning_transform.checkpoint_reader import check_compatible, read_checkpoint
from meaning_transform.compile_step import compile_step
from meaning_transform.config import check_accelerator, instantiate_checked, validate_config
from meaning_transform.module import MeaningModule
from meaning_transform.rundir import new_run_dir

log = logging.getLogger("meaning_transform")


def resolve_output_dir(cfg: DictConfig) -> Path:
    """The run directory: ``paths.output_dir``, Hydra's run dir, or a new unique one (created)."""
    if cfg.paths.get("output_dir"):
        return Path(cfg.paths.output_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(new_run_dir(cfg.paths.log_dir, cfg.experiment_name))


def _build_callbacks(cfg: DictConfig) -> list[Callback]:
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None and "_target_" in node:
            callbacks.append(instantiate_checked(node, f"callbacks.{name}"))
    return callbacks


def _build_loggers(cfg: DictConfig) -> tuple[list[Any], list[Callback]]:
    """(Lightning loggers, trackers) of ``logger.*``: a tracker that needs the run's callback
    hooks (``logger=mlflow`` logs each epoch's row and the finished run) is a Callback."""
    built = [
        instantiate_checked(node, f"logger.{name}")
        for name, node in (cfg.get("logger") or {}).items()
        if node is not None and "_target_" in node
    ]
    trackers = [b for b in built if isinstance(b, Callback)]
    return [b for b in built if not isinstance(b, Callback)], trackers


def build_trainer(
    cfg: DictConfig, extra: list[Callback] | None = None
) -> tuple[L.Trainer, list[Callback]]:
    """Lightning Trainer with the configured callbacks (plus ``extra``), loggers, atomic saves.

    A run always has a MetricsHistory (its summary is read from it): one is added, writing no
    CSV, when the config has none (e.g. ``callbacks=none``).
    """
    loggers, trackers = _build_loggers(cfg)
    callbacks = [*_build_callbacks(cfg), *(extra or [])]
    if find_history(callbacks) is None:
        callbacks.append(MetricsHistory())
    callbacks += trackers  # after the history: they log the rows it records
    trainer = instantiate_checked(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    return trainer, callbacks


def configure_logging(cfg: DictConfig) -> None:
    """DEBUG for our package when ``verbose`` (the seed's --debug), else INFO."""
    level = logging.DEBUG if cfg.get("verbose") else logging.INFO
    logging.getLogger("meaning_transform").setLevel(level)
    if not logging.getLogger().handlers:  # API use without Hydra's logging config
        logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")


def prepare(cfg: DictConfig) -> tuple[DictConfig, Any, MeaningModule, dict[str, Any]]:
    """Validate, load data and build the model. Writes nothing; raises USER_ERRORS on bad input."""
    validate_config(cfg)
    check_accelerator(cfg)
    cfg = cfg.copy()
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = instantiate_checked(cfg.data, "data", schema=cfg.schema)
    datamodule.setup("fit")
    source = cfg.get("ckpt_path") or cfg.get("init_from")
    ckpt = read_checkpoint(source) if source else None
    with open_dict(cfg):
        cfg.paths.output_dir = str(resolve_output_dir(cfg))
    module = build_module(cfg, datamodule.schema.to_dict())
    lineage: dict[str, Any] = {"resumed_from": None, "init_from": None, "parent_run": None}
    if ckpt is not None:
        check_compatible(module, ckpt, source)
        lineage.update(_lineage(cfg, ckpt))
        if cfg.get("init_from"):
            module.load_state_dict(ckpt["state_dict"])
            lineage["init_from"] = str(Path(source).resolve())
        else:
            lineage["resumed_from"] = str(Path(source).resolve())
    if cfg.get("compile"):  # the step only: Lightning's loop and the optimizer stay eager
        compile_step(module)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    return cfg, datamodule, module, lineage


def build_module(cfg: DictConfig, schema: dict[str, Any]) -> MeaningModule:
    """The MeaningModule the config describes, for a fitted ``schema``."""
    return MeaningModule(
        schema=schema,
        model=cfg.model,
        compression=cfg.compression,
        loss=cfg.loss,
        optimizer=cfg.optimizer,
        scheduler=cfg.get("scheduler"),
        seed=cfg.get("seed"),
        objective_beta=cfg.get("objective_beta"),
    )


def _lineage(cfg: DictConfig, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The parent run a checkpoint came from and the loss weights this run changes."""
    parent = ckpt.get("run_config") or {}
    changed = changed_loss_weights(
        parent.get("loss"), OmegaConf.to_container(cfg.loss, resolve=True)
    )
    if not cfg.model.get("variational", False):
        for key in [k for k in changed if k.startswith("kl_")]:
            old, new = changed.pop(key)
            log.warning(
                "loss.%s %s -> %s changes nothing: the encoder is deterministic "
                "(model.variational=false), so the KL term is 0",
                key,
                old,
                new,
            )
    return {
        "parent_run": {
            "experiment_name": parent.get("experiment_name"),
            "output_dir": (parent.get("paths") or {}).get("output_dir"),
            "epoch": ckpt.get("epoch", -1) + 1,
            "stage": parent.get("stage"),
            "loss": parent.get("loss"),
        },
        "changed_loss_weights": changed,
    }


def epochs_done(path: str) -> int:
    """Epochs a checkpoint has completed (the next run starts at this 0-based epoch)."""
    return int(read_checkpoint(path).get("epoch", -1)) + 1


def changed_loss_weights(old: Any, new: dict[str, Any]) -> dict[str, list[Any]]:
    """Loss weights (and KL settings) that differ between a parent run's config and ``new``."""
    if not isinstance(old, dict):
        return {}
    keys = [k for k in new if k.endswith("_weight") or k.startswith("kl_")]
    return {k: [old.get(k), new.get(k)] for k in keys if old.get(k) != new.get(k)}
