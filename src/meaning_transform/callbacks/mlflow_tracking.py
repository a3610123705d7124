"""``logger=mlflow``: each run in an MLflow tracking store, and a sweep's jobs under one parent run.

A run logs its flattened config as params, every ``metrics.csv`` column per epoch (step = the
epoch, the same names), the test metrics at the end, and ``summary.json``, ``config.yaml``, the
CSVs, the plots and ``checkpoints/best.ckpt`` as artifacts once they are all written. The store is
``MLFLOW_TRACKING_URI`` when set, else a SQLite file ``<paths.log_dir>/mlflow.db`` with the
artifacts beside it in ``mlartifacts/`` (MLflow's own default for local use since 3.7; its file
store is deprecated). Look at it with ``mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db``
(the ``mlflow`` package; the ``mlflow`` extra installs the client only).

A multirun's parent run is started by ``sweep_callback.MlflowSweep`` before the first job, which
records its id in ``<sweep dir>/mlflow_parent_run.json``; each job's run names it as its parent.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from meaning_transform.callbacks.history import Row, find_history
from meaning_transform.callbacks.run_end import RunEndCallback
from meaning_transform.errors import ConfigError
from meaning_transform.io import atomic_write

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("meaning_transform")

LOCAL_STORE = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
#: in a multirun's sweep dir: the parent run the jobs' runs are nested under
PARENT_RUN_FILE = "mlflow_parent_run.json"
#: MLflow's tag for a nested run's parent (mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID)
PARENT_TAG = "mlflow.parentRunId"
#: what a finished run uploads, relative to its run dir, when present
RUN_ARTIFACTS = (
    "summary.json",
    "config.yaml",
    "metrics.csv",
    "semantic_drift.csv",
    "training_curves.png",
    "semantic_drift.png",
)
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_BATCH = 100  # params per log_batch call (MLflow's limit); metrics allow 1000


def require_mlflow() -> None:
    """ConfigError when the ``mlflow`` extra is not installed."""
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            "logger=mlflow needs the mlflow package: pip install 'meaning-transform[mlflow]'"
        )


def tracking_uri(uri: str | None, store_dir: str | Path) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite store in ``store_dir``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path(store_dir).resolve() / LOCAL_STORE}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of a local SQLite store keeps artifacts: ``mlartifacts/`` beside
    the database (None: the store decides, e.g. a tracking server)."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path == "/:memory:":
        return None
    return (Path(unquote(parsed.path)).parent / LOCAL_ARTIFACTS).resolve().as_uri()


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name`` in the store, created if it does not exist."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location(uri))
    if experiment.lifecycle_stage != "active":
        raise ConfigError(
            f"MLflow experiment {name!r} is deleted in {uri}: restore it (mlflow experiments "
            "restore) or choose another experiment_name"
        )
    return experiment.experiment_id


def open_store(uri: str) -> MlflowClient:
    """An MLflow client for ``uri``; its folder is created for a local SQLite store."""
    require_mlflow()
    from mlflow.tracking import MlflowClient

    # "Creating initial MLflow database tables..." is not the user's to act on
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:"):
        Path(unquote(parsed.path)).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def flatten(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a plain config: lists of plain values stay one value
    (``model.hidden_dims`` = ``[256, 128, 64]``), lists holding dicts or lists go by index."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            yield from flatten(value, f"{prefix}{key}.")
    elif isinstance(config, list) and any(isinstance(v, list | Mapping) for v in config):
        for i, value in enumerate(config):
            yield from flatten(value, f"{prefix}{i}.")
    else:
        yield prefix[:-1], config


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def log_params(client: MlflowClient, run_id: str, config: Mapping[str, Any]) -> None:
    """The flattened ``config`` as the run's params."""
    from mlflow.entities import Param

    params = [Param(key, str(value)) for key, value in flatten(config)]
    for chunk in _chunks(params, _BATCH):
        client.log_batch(run_id, params=chunk)


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """``metrics`` at ``step``, under their own names."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
    for chunk in _chunks(batch, 10 * _BATCH):
        client.log_batch(run_id, metrics=chunk)


def write_parent_run(sweep_dir: str | Path, run_id: str) -> None:
    """Record a sweep's parent run id in its sweep dir."""
    text = json.dumps({"run_id": run_id})
    atomic_write(Path(sweep_dir) / PARENT_RUN_FILE, lambda tmp: Path(tmp).write_text(text))


def read_parent_run(sweep_dir: str | Path) -> str | None:
    """The parent run id recorded in ``sweep_dir`` (None when there is none or it is not one)."""
    try:
        run_id = json.loads((Path(sweep_dir) / PARENT_RUN_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) and _RUN_ID.fullmatch(run_id) else None


def _multirun_job() -> tuple[str, str, list[str]] | None:
    """(sweep dir, job number, the job's overrides) in a Hydra multirun job, else None."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    return str(hc.sweep.dir), str(hc.job.num), [str(o) for o in hc.overrides.task]


class MlflowTracker(RunEndCallback):
    """Logs one run to MLflow (rank 0): params at fit start, each epoch's row, the outputs."""

    def __init__(
        self,
        store_dir: str,
        experiment_name: str,
        output_dir: str,
        tracking_uri: str | None = None,
        log_checkpoint: bool = True,
    ) -> None:
        require_mlflow()
        self._tracking_uri = tracking_uri
        self.uri: str | None = None  # resolved at fit start (tracking_uri())
        self.store_dir = store_dir
        self.experiment_name = experiment_name
        self.output_dir = Path(output_dir)
        self.log_checkpoint = bool(log_checkpoint)
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self._logged_epochs = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the MLflow run (nested under the sweep's parent run in a multirun) with the
        flattened config as params."""
        if not trainer.is_global_zero or self.run_id is not None:
            return
        self.uri = tracking_uri(self._tracking_uri, self.store_dir)
        self.client = open_store(self.uri)
        tags = {"meaning_transform.output_dir": str(self.output_dir.resolve())}
        name = self.output_dir.name
        job = _multirun_job()
        if job is not None:
            sweep_dir, num, overrides = job
            name = f"{Path(sweep_dir).name}/{num}"
            tags["meaning_transform.overrides"] = " ".join(overrides)
            parent = read_parent_run(sweep_dir)
            if parent is not None:
                tags[PARENT_TAG] = parent
        exp = experiment_id(self.client, self.experiment_name, self.uri)
        self.run_id = self.client.create_run(exp, run_name=name, tags=tags).info.run_id
        config = getattr(pl_module, "run_config", None) or dict(pl_module.hparams)
        log_params(self.client, self.run_id, config)
        log.info("MLflow run %s in %s (experiment %r)", self.run_id, self.uri, self.experiment_name)

    def _log_new_rows(self, trainer: L.Trainer) -> None:
        """Every history row not logged yet, at step = its epoch."""
        history = find_history(trainer.callbacks)  # type: ignore[arg-type]
        if self.run_id is None or history is None:
            return
        rows: list[Row] = [r for r in history.rows if r["epoch"] > self._logged_epochs]
        for row in rows:
            metrics = {k: v for k, v in row.items() if k != "epoch"}
            log_metrics(self.client, self.run_id, metrics, int(row["epoch"]))
            self._logged_epochs = int(row["epoch"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch's row (MetricsHistory recorded it at validation end or just before)."""
        self._log_new_rows(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Rows recorded after the last epoch end (none, unless a callback stopped the epoch)."""
        self._log_new_rows(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """End the run as FAILED."""
        if self.run_id is not None:
            self._log_new_rows(trainer)
            self.client.set_terminated(self.run_id, status="FAILED")
            self.run_id = None

    def on_run_end(self, trainer: L.Trainer, summary: dict[str, Any]) -> None:
        """The test metrics, the run's files and its best checkpoint; end the run."""
        if self.run_id is None:
            return
        self._log_new_rows(trainer)
        if summary.get("test"):
            log_metrics(self.client, self.run_id, summary["test"], int(summary["epochs_run"]))
        for name in RUN_ARTIFACTS:
            if (self.output_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.output_dir / name))
        best = summary.get("best_model_path")
        if self.log_checkpoint and best and Path(best).is_file():
            self.client.log_artifact(self.run_id, best, artifact_path="checkpoints")
        self.client.set_terminated(self.run_id, status="FINISHED")
        self.run_id = None


def start_sweep_run(node: Mapping[str, Any], experiment_name: str, sweep_dir: str) -> str:
    """Create a sweep's parent run (``node``: the ``logger.mlflow`` config) and record it."""
    uri = tracking_uri(node.get("tracking_uri"), node["store_dir"])
    client = open_store(uri)
    run = client.create_run(
        experiment_id(client, experiment_name, uri),
        run_name=f"sweep {Path(sweep_dir).name}",
        tags={"meaning_transform.sweep_dir": str(Path(sweep_dir).resolve())},
    )
    write_parent_run(sweep_dir, run.info.run_id)
    return run.info.run_id


def end_sweep_run(
    node: Mapping[str, Any], sweep_dir: str, artifacts: list[Path], failed: bool
) -> None:
    """Upload the sweep report's ``artifacts`` to the parent run and end it."""
    run_id = read_parent_run(sweep_dir)
    if run_id is None:
        return
    client = open_store(tracking_uri(node.get("tracking_uri"), node["store_dir"]))
    for path in artifacts:
        if path.is_file():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
