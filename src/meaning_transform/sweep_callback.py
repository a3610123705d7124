"""Hydra callback: mark failed jobs with ``failed.json`` and write the sweep report.

Registered in ``conf/hydra/default.yaml`` under ``hydra.callbacks.sweep_report``.
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from meaning_transform.failures import FAILED_JSON, write_failed_json

log = logging.getLogger(__name__)


def _error_text(value: Any) -> tuple[str, str | None]:
    """(one-line message, traceback) for what a failed job returned."""
    if isinstance(value, BaseException):
        tb = "".join(traceback.format_exception(type(value), value, value.__traceback__))
        return f"{type(value).__name__}: {value}", tb
    return repr(value), None


def _job_output_dir(config: DictConfig) -> Path | None:
    out = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)
    return Path(out) if out else None


def _task_overrides(config: DictConfig) -> list[str]:
    node = OmegaConf.select(config, "hydra.overrides.task", default=None)
    return [str(o) for o in OmegaConf.to_container(node)] if node is not None else []


def record_job_failure(config: DictConfig, job_return: JobReturn) -> Path | None:
    """``failed.json`` for a job that failed outside the training code (which records its own)."""
    out = _job_output_dir(config)
    if out is None:
        return None
    error, tb = _error_text(job_return._return_value)
    return write_failed_json(out, error, _task_overrides(config), tb)


class JobFailed(RuntimeError):
    """A job that recorded its failure in ``failed.json`` (raised to the Optuna sweeper)."""


def _is_optuna(config: DictConfig) -> bool:
    target = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
    return str(target).endswith("OptunaSweeper")


def fail_for_optuna(config: DictConfig, job_return: JobReturn) -> bool:
    """Turn a job that returned NaN after writing ``failed.json`` into a failed JobReturn.

    The training code returns NaN so that Hydra's basic sweeper, which stops at the first
    failed JobReturn, runs the other jobs. The Optuna sweeper (1.3 with optuna 2.10) crashes
    on a NaN value instead ("Values were told..."); a failed JobReturn is what it marks as a
    failed trial before going on (up to ``hydra.sweeper.max_failure_rate``).
    """
    out = _job_output_dir(config)
    value = job_return._return_value
    if out is None or not (isinstance(value, float) and math.isnan(value)):
        return False
    if not (out / FAILED_JSON).is_file():
        return False
    try:
        error = json.loads((out / FAILED_JSON).read_text()).get("error")
    except (OSError, ValueError):
        error = None
    job_return.status = JobStatus.FAILED
    job_return.return_value = JobFailed(f"{error or 'job failed'} (see {out / FAILED_JSON})")
    return True


def _is_multirun(config: DictConfig) -> bool:
    mode = OmegaConf.select(config, "hydra.mode", default=None)
    return getattr(mode, "name", mode) == RunMode.MULTIRUN.name


class SweepReport(Callback):
    """Report every multirun: ``sweep_summary.csv`` and ``rate_drift.png`` in the sweep dir.

    The report is rewritten after each job as well as at the end: training records its own
    failures and returns NaN, but an error that still escapes a job (e.g. a BaseException, or an
    Optuna sweep stopped by ``max_failure_rate``) makes Hydra skip ``on_multirun_end``.
    Nothing here ever raises: a reporting problem must not fail a training sweep (imports are
    lazy for the same reason: Hydra builds this callback before any job runs).
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Write ``failed.json`` for a failed job (Optuna: fail a NaN job); refresh the report."""
        try:
            if job_return.status == JobStatus.FAILED:
                record_job_failure(config, job_return)
            elif _is_optuna(config):
                fail_for_optuna(config, job_return)
            if _is_multirun(config):
                from meaning_transform.report import write_report

                write_report(config.hydra.sweep.dir)
        except Exception as e:  # noqa: BLE001 - reporting must never fail the job
            log.warning("sweep report after job failed: %s: %s", type(e).__name__, e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the report into ``hydra.sweep.dir`` and print its table.

        Failed jobs do not stop a sweep (the training code records them and returns NaN);
        once everything is written, the process exits 1 if any job failed, so scripts notice.
        """
        rows: list[dict[str, Any]] = []
        try:
            from meaning_transform.report import build_report

            rows = build_report(config.hydra.sweep.dir)
        except Exception as e:  # noqa: BLE001 - reporting must never fail the sweep
            log.warning("sweep report not written: %s: %s", type(e).__name__, e)
        failed = [r for r in rows if r.get("status") == "failed"]
        if failed:
            log.error(
                "%d of %d jobs failed (see failed.json in their run dirs)", len(failed), len(rows)
            )
            raise SystemExit(1)


def _mlflow_node(config: DictConfig) -> DictConfig | None:
    """The sweep's ``logger.mlflow`` config, when it logs to MLflow."""
    node = OmegaConf.select(config, "logger.mlflow", default=None)
    return node if isinstance(node, DictConfig) and "_target_" in node else None


class MlflowSweep(Callback):
    """``logger=mlflow`` in a multirun: one parent run that every job's run is nested under.

    Registered after ``sweep_report`` (``conf/hydra/default.yaml``): Hydra calls end hooks in
    reverse order, so the parent run ends, FAILED if a job failed, with the sweep report as its
    artifacts, before ``SweepReport`` exits 1 for the failed jobs. Without ``logger.mlflow`` in
    the config it does nothing; like ``SweepReport`` it never fails the sweep.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Start the parent run; its id goes into the sweep dir for the jobs."""
        node = _mlflow_node(config)
        if node is None:
            return
        try:
            from meaning_transform.callbacks.mlflow_tracking import start_sweep_run

            start_sweep_run(node, config.experiment_name, config.hydra.sweep.dir)
        except Exception as e:  # noqa: BLE001 - the jobs still log, as top-level runs
            log.warning("MLflow parent run not started: %s: %s", type(e).__name__, e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Upload the sweep report to the parent run and end it."""
        node = _mlflow_node(config)
        if node is None:
            return
        try:
            from meaning_transform.callbacks.mlflow_tracking import end_sweep_run
            from meaning_transform.report import RATE_DRIFT_PNG, SUMMARY_CSV

            sweep = Path(config.hydra.sweep.dir)
            failed = any(sweep.glob(f"*/{FAILED_JSON}"))
            end_sweep_run(node, str(sweep), [sweep / SUMMARY_CSV, sweep / RATE_DRIFT_PNG], failed)
        except Exception as e:  # noqa: BLE001 - reporting must never fail the sweep
            log.warning("MLflow parent run not ended: %s: %s", type(e).__name__, e)
