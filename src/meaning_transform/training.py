"""One code path for ``python train.py`` and the Python API: ``run(cfg) -> summary dict``.

The steps, each in its own module: build (``assemble``), fit and test (here), summarize
(``run_summary``), and on failure record or report it (``failures``).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from omegaconf import DictConfig, OmegaConf

from meaning_transform.assemble import build_trainer, configure_logging, prepare
from meaning_transform.callbacks.checkpoint import BestCheckpoint
from meaning_transform.callbacks.history import find_history
from meaning_transform.callbacks.run_end import notify_run_end
from meaning_transform.console import quiet_libraries
from meaning_transform.errors import ConfigError
from meaning_transform.failures import exit_for, record_failure
from meaning_transform.io import remove_stale_temp_files
from meaning_transform.messages import few
from meaning_transform.module import MeaningModule
from meaning_transform.run_summary import log_final, optimized_value, summarize, write_summary

log = logging.getLogger("meaning_transform")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train (and test) one model as ``cfg`` says; write the run directory; return the summary."""
    configure_logging(cfg)
    quiet_libraries(bool(cfg.get("verbose")))
    cfg, datamodule, module, lineage = prepare(cfg)
    out_dir = Path(cfg.paths.output_dir)
    trainer, callbacks = build_trainer(cfg)
    _check_launch(cfg, trainer)
    if trainer.is_global_zero:
        _start_run_dir(cfg, out_dir, module)
    started = time.perf_counter()
    for callback in callbacks:  # the folder a resumed best checkpoint may be carried from
        if isinstance(callback, BestCheckpoint) and cfg.get("ckpt_path"):
            callback.resumed_from = Path(cfg.ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    history = find_history(callbacks)
    best_path = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    summary = summarize(cfg, history.rows if history else [], best_path, lineage)
    summary["compression_kind"] = module.bottleneck.kind
    if cfg.get("test") and datamodule.test_x.shape[0] and not trainer.fast_dev_run:
        summary["test"] = evaluate_split(trainer, module, datamodule, summary["best_model_path"])
        # trainer.test loaded the best weights into module: code the test split with them
        summary["test_coding"] = module.code(datamodule.rows("test"))
    # the classical codes on the split the run last evaluated (test, else validation)
    split = next((s for s in ("test", "val") if module.classical.get(s)), None)
    summary["baselines"] = module.classical[split] if split else None
    summary["baselines_split"] = split
    summary["wall_time_s"] = time.perf_counter() - started
    if trainer.is_global_zero:
        write_summary(out_dir, summary)
        notify_run_end(callbacks, trainer, summary)
        log_final(summary)
    return summary


def _check_launch(cfg: DictConfig, trainer: L.Trainer) -> None:
    """A DDP launch that re-runs the script cannot run inside a Hydra multirun."""
    if not (_in_multirun() and _relaunches_script(trainer)):
        return
    raise ConfigError(
        f"trainer.strategy={cfg.trainer.get('strategy')!r} with "
        f"trainer.devices={cfg.trainer.get('devices')!r} cannot run inside a Hydra multirun: "
        "Lightning starts the other ranks by re-running train.py with the same arguments, "
        "so every rank would run the whole sweep. Run each setting as its own "
        "`python train.py trainer=ddp ...`, or use a launcher that starts every rank "
        "itself (e.g. hydra/launcher=submitit_slurm with tasks_per_node = devices)"
    )


def _start_run_dir(cfg: DictConfig, out_dir: Path, module: MeaningModule) -> None:
    """Clean temp files of killed writes, create the run directory and save the config."""
    _remove_stale_temp_files(out_dir, cfg.get("ckpt_path"))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    except OSError as e:
        raise ConfigError(
            f"paths.output_dir={str(out_dir)!r}: cannot write there ({e.strerror}); "
            "choose a writable paths.log_dir or paths.output_dir"
        ) from None
    log.info("run directory: %s", out_dir)
    log.debug("schema:\n%s", module.schema.describe())


def _remove_stale_temp_files(out_dir: Path, resumed: str | None) -> None:
    """Delete temp files of killed writes in the run dir and, on resume, in the resumed run's."""
    folders = [out_dir, out_dir / "checkpoints"]
    if resumed:
        ckpt_dir = Path(resumed).resolve().parent
        folders += [ckpt_dir, ckpt_dir.parent] if ckpt_dir.name == "checkpoints" else [ckpt_dir]
    stale = [p for folder in dict.fromkeys(folders) for p in remove_stale_temp_files(folder)]
    if stale:
        log.info("removed %d temp file(s) left by a killed run: %s", len(stale), few(stale, 3))


def evaluate_split(
    trainer: L.Trainer, module: MeaningModule, datamodule: Any, ckpt: str | None
) -> dict[str, float]:
    """Test-split metrics of the best checkpoint (or the current weights when there is none)."""
    path = ckpt if ckpt and Path(ckpt).is_file() else None
    results = trainer.test(
        module, datamodule=datamodule, ckpt_path=path, verbose=False, weights_only=True
    )
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def _relaunches_script(trainer: L.Trainer) -> bool:
    """True when Lightning starts the other ranks by re-running ``sys.argv`` (ddp on one node)."""
    launcher = trainer.strategy.launcher
    return isinstance(launcher, _SubprocessScriptLauncher) and not (
        launcher.cluster_environment.creates_processes_externally
    )


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def main_entry(cfg: DictConfig) -> float | None:
    """``train.py``'s body: user errors become one line on stderr and exit code 2.

    In a multirun a failing job must not end the sweep: its error is written to
    ``failed.json`` in its run dir and the job returns NaN; the sweep report lists it and the
    sweep exits non-zero at the end (see ``sweep_callback``).
    """
    try:
        return optimized_value(cfg, run(cfg))
    except Exception as e:
        if _in_multirun():
            record_failure(e)
            return math.nan
        exit_for(e)
