"""One code path for ``python train.py`` and the Python API: ``run(cfg) -> summary dict``."""

from __future__ import annotations

import errno
import json
import logging
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

from meaning_transform.baselines import baselines_of_splits
from meaning_transform.baselines import describe as describe_baselines
from meaning_transform.callbacks.checkpoint import AtomicCheckpointIO, atomic_write
from meaning_transform.callbacks.history import MetricsHistory, SemanticDriftTracker
from meaning_transform.checkpoints import check_compatible, read_checkpoint
from meaning_transform.config import check_accelerator, instantiate_checked, validate_config
from meaning_transform.console import quiet_libraries
from meaning_transform.errors import USER_ERRORS, ConfigError
from meaning_transform.io import remove_stale_temp_files
from meaning_transform.messages import few
from meaning_transform.module import MeaningModule
from meaning_transform.rundir import new_run_dir

log = logging.getLogger("meaning_transform")

#: storage failures while a run writes: reported as one line (exit code 1), not a traceback
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


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


def _build_loggers(cfg: DictConfig) -> list[Any] | bool:
    loggers = [
        instantiate_checked(node, f"logger.{name}")
        for name, node in (cfg.get("logger") or {}).items()
        if node is not None and "_target_" in node
    ]
    return loggers or False


def build_trainer(
    cfg: DictConfig, extra: list[Callback] | None = None
) -> tuple[L.Trainer, list[Callback]]:
    """Lightning Trainer with the configured callbacks (plus ``extra``), loggers, atomic saves."""
    callbacks = [*_build_callbacks(cfg), *(extra or [])]
    trainer = instantiate_checked(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=_build_loggers(cfg),
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
    lineage: dict[str, Any] = {"resumed_from": None, "init_from": None, "parent_run": None}
    source = cfg.get("ckpt_path") or cfg.get("init_from")
    ckpt = read_checkpoint(source) if source else None
    with open_dict(cfg):
        cfg.paths.output_dir = str(resolve_output_dir(cfg))
    module = MeaningModule(
        schema=datamodule.schema.to_dict(),
        model=cfg.model,
        compression=cfg.compression,
        loss=cfg.loss,
        optimizer=cfg.optimizer,
        scheduler=cfg.get("scheduler"),
        seed=cfg.get("seed"),
    )
    if ckpt is not None:
        check_compatible(module, ckpt, source)
        parent = ckpt.get("run_config") or {}
        lineage["parent_run"] = {
            "experiment_name": parent.get("experiment_name"),
            "output_dir": (parent.get("paths") or {}).get("output_dir"),
            "epoch": ckpt.get("epoch", -1) + 1,
            "stage": parent.get("stage"),
            "loss": parent.get("loss"),
        }
        changed = _changed_loss_weights(
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
        lineage["changed_loss_weights"] = changed
        if cfg.get("init_from"):
            module.load_state_dict(ckpt["state_dict"])
            lineage["init_from"] = str(Path(source).resolve())
        else:
            lineage["resumed_from"] = str(Path(source).resolve())
    if cfg.get("compile"):  # the step only: Lightning's loop and the optimizer stay eager
        module._step = torch.compile(module._step)  # type: ignore[method-assign]
    module.run_config = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    return cfg, datamodule, module, lineage


def epochs_done(path: str) -> int:
    """Epochs a checkpoint has completed (the next run starts at this 0-based epoch)."""
    return int(read_checkpoint(path).get("epoch", -1)) + 1


def _changed_loss_weights(old: Any, new: dict[str, Any]) -> dict[str, list[Any]]:
    if not isinstance(old, dict):
        return {}
    keys = [k for k in new if k.endswith("_weight") or k.startswith("kl_")]
    return {k: [old.get(k), new.get(k)] for k in keys if old.get(k) != new.get(k)}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train (and test) one model as ``cfg`` says; write the run directory; return the summary."""
    configure_logging(cfg)
    quiet_libraries(bool(cfg.get("verbose")))
    cfg, datamodule, module, lineage = prepare(cfg)
    out_dir = Path(cfg.paths.output_dir)
    trainer, callbacks = build_trainer(cfg)
    if _in_multirun() and _relaunches_script(trainer):
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.get('strategy')!r} with "
            f"trainer.devices={cfg.trainer.get('devices')!r} cannot run inside a Hydra multirun: "
            "Lightning starts the other ranks by re-running train.py with the same arguments, "
            "so every rank would run the whole sweep. Run each setting as its own "
            "`python train.py trainer=ddp ...`, or use a launcher that starts every rank "
            "itself (e.g. hydra/launcher=submitit_slurm with tasks_per_node = devices)"
        )
    if trainer.is_global_zero:
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
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    summary = _summarize(cfg, trainer, callbacks, lineage)
    if cfg.get("test") and datamodule.test_x.shape[0] and not trainer.fast_dev_run:
        summary["test"] = evaluate_split(trainer, module, datamodule, summary["best_model_path"])
        # trainer.test loaded the best weights into module: code the test split with them
        summary["test_coding"] = module.code(datamodule.rows("test"))
    summary["baselines"] = baselines_of_splits(datamodule, ("test",))
    summary["wall_time_s"] = time.perf_counter() - started
    if trainer.is_global_zero:
        atomic_write(
            out_dir / "summary.json",
            lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2, default=_json)),
        )
        _print_final(summary)
    return summary


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


def _log_baselines(s: dict[str, Any]) -> None:
    """The last lines: the classical baselines beside this model's test bits and drift."""
    if not s.get("baselines"):
        return
    test = s.get("test") or {}
    bits, drift = test.get("test/rate_bits"), test.get("test/drift")
    model = (
        f"this model: {bits:.1f} bits/state at test drift {drift:.4f}"
        if bits is not None and drift is not None
        else "this model: not tested"
    )
    log.info("%s; %s", describe_baselines(s["baselines"]), model)


def _history(callbacks: list[Callback], kind: type) -> list[dict[str, float]]:
    for cb in callbacks:
        if type(cb) is kind:
            return cb.rows
    return []


def _stage_rows(rows: list[dict[str, float]], stage: str) -> list[dict[str, float]]:
    out = []
    for r in rows:
        vals = {k.split("/", 1)[1]: v for k, v in r.items() if k.startswith(f"{stage}/")}
        vals = {
            k: v for k, v in vals.items() if not k.startswith(("drift", "mae/", "preservation"))
        }
        if vals:
            out.append({"epoch": r["epoch"], **vals})
    return out


def _summarize(
    cfg: DictConfig, trainer: L.Trainer, callbacks: list[Callback], lineage: dict[str, Any]
) -> dict[str, Any]:
    beta = cfg.get("objective_beta")
    rows = [_with_rate_drift(r, beta) for r in _history(callbacks, MetricsHistory)]
    drift_rows = _history(callbacks, SemanticDriftTracker)
    monitor, mode = cfg.monitor.metric, cfg.monitor.mode
    ckpt_cb = trainer.checkpoint_callback
    scored = [r for r in rows if monitor in r]
    best = None
    if scored:
        pick = min if mode == "min" else max
        best = pick(scored, key=lambda r: r[monitor])
    best_path = getattr(ckpt_cb, "best_model_path", "") or None
    last_path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    final = rows[-1] if rows else {}
    summary = {
        "experiment_name": cfg.experiment_name,
        "experiment_dir": str(Path(cfg.paths.output_dir).resolve()),
        "monitor": monitor,
        "best_val_loss": best.get("val/loss") if best else None,
        "best_score": best.get(monitor) if best else None,
        "best_epoch": int(best["epoch"]) if best else None,
        "epochs_run": int(final.get("epoch", 0)),
        "rate_bits": best.get("val/rate_bits") if best else final.get("val/rate_bits"),
        "drift": best.get("val/drift") if best else None,
        "preservation": best.get("val/preservation") if best else None,
        "drift_groups": {
            k.removeprefix("val/drift_group/"): v
            for k, v in (best or {}).items()
            if k.startswith("val/drift_group/")
        },
        "best_model_path": str(Path(best_path).resolve()) if best_path else None,
        "last_model_path": str(last_path.resolve()) if last_path.is_file() else None,
        "train_losses": _stage_rows(rows, "train"),
        "val_losses": _stage_rows(rows, "val"),
        "semantic_drift": drift_rows,
        "history": rows,
        "compression": cfg.compression.get("_target_", "").rsplit(".", 1)[-1],
        "compression_level": cfg.compression.get("level"),
        "stage": cfg.get("stage"),
        **lineage,
    }
    key = cfg.get("optimized_metric")
    summary["objective_beta"] = beta
    summary["optimized_metric"] = key
    summary["optimized_value"] = _at_best_epoch(summary, key) if key else None
    return summary


#: derived after training from logged metrics (see ``objective_beta`` in conf/train.yaml)
RATE_DRIFT = "val/rate_drift"


def _with_rate_drift(row: dict[str, float], beta: float | None) -> dict[str, float]:
    """The row plus ``val/rate_drift = val/drift + beta * val/rate_bits / 32`` (a copy)."""
    if beta is None or "val/drift" not in row or "val/rate_bits" not in row:
        return row
    return {**row, RATE_DRIFT: row["val/drift"] + float(beta) * row["val/rate_bits"] / 32}


def _json(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _print_final(s: dict[str, Any]) -> None:
    groups = ", ".join(f"{g} {v:.3f}" for g, v in s["drift_groups"].items())
    best = s["best_val_loss"]
    log.info("run directory: %s", s["experiment_dir"])
    log.info(
        "best val/loss: %s at epoch %s (of %s run)",
        f"{best:.4f}" if best is not None else "n/a",
        s["best_epoch"],
        s["epochs_run"],
    )
    if s["drift"] is not None:
        log.info(
            "semantic drift %.4f (preservation %.4f); by group: %s",
            s["drift"],
            s["preservation"],
            groups,
        )
    if s["rate_bits"] is not None:
        log.info("rate: %.2f bits per state", s["rate_bits"])
    coding = s.get("test_coding")
    if coding:
        log.info(
            "test split really coded (%s): %.2f bits per state (estimated %.2f), %d bytes for %d states",
            " + ".join(coding["coded"]),
            coding["coded_bits_per_state"],
            coding["estimated_bits_per_state"],
            coding["num_bytes"],
            coding["num_states"],
        )
    _log_baselines(s)


def optimized_value(cfg: DictConfig, summary: dict[str, Any]) -> float | None:
    """The ``optimized_metric`` at the best epoch; a loud error when it was never logged."""
    key = cfg.get("optimized_metric")
    if not key:
        return None
    value = _at_best_epoch(summary, key)
    if value is not None:
        return value
    logged = sorted({k for r in summary["history"] for k in r})
    raise ConfigError(f"optimized_metric={key!r} was never logged; logged metrics: {logged}")


def _at_best_epoch(summary: dict[str, Any], key: str) -> float | None:
    best_epoch = summary.get("best_epoch")
    for row in summary["history"]:
        if row["epoch"] == best_epoch and key in row:
            return float(row[key])
    return None


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
        summary = run(cfg)
        return optimized_value(cfg, summary)
    except Exception as e:
        if _in_multirun():
            record_failure(e)
            return math.nan
        if isinstance(e, USER_ERRORS):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:  # a full disk, a read-only mount
            print(
                f"error: cannot write {e.filename or 'the run directory'}: {e.strerror}",
                file=sys.stderr,
            )
            sys.exit(1)
        raise


def record_failure(error: BaseException) -> None:
    """Write ``failed.json`` (error, overrides, traceback) into the Hydra job's run dir."""
    hc = HydraConfig.get()
    log.error("job %s failed: %s: %s", hc.job.num, type(error).__name__, error)
    payload = {
        "error": f"{type(error).__name__}: {error}",
        "overrides": list(hc.overrides.task),
        "traceback": traceback.format_exc(),
    }
    out = Path(hc.runtime.output_dir) / "failed.json"
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
