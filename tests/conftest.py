"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from meaning_transform.schema import FeatureSchema

REPO = Path(__file__).resolve().parents[1]
AGENTFARM_SCHEMA = REPO / "conf" / "schema" / "agentfarm.yaml"
REAL_DB = REPO.parent / "shared" / "data" / "agentfarm_run1.db"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist the workers are the parallelism: one torch thread each (and in the
    processes they start), not every worker spinning a thread per core."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)


@pytest.fixture
def agentfarm_cfg() -> dict[str, Any]:
    """The AgentFarm schema as the plain dict its YAML file holds."""
    return yaml.safe_load(AGENTFARM_SCHEMA.read_text())


@pytest.fixture
def agentfarm_schema(agentfarm_cfg: dict[str, Any]) -> FeatureSchema:
    """The (unfitted) AgentFarm feature schema."""
    return FeatureSchema.from_config(agentfarm_cfg)


@pytest.fixture(scope="module")
def agentfarm_schema_module() -> FeatureSchema:
    """The (unfitted) AgentFarm feature schema, shared by a module's tests."""
    return FeatureSchema.from_config(yaml.safe_load(AGENTFARM_SCHEMA.read_text()))


@pytest.fixture
def real_db() -> Path:
    """The real AgentFarm database in shared/data (skips when this clone does not have it)."""
    if not REAL_DB.exists():
        pytest.skip(f"real AgentFarm database not present at {REAL_DB}")
    return REAL_DB


# ---------------------------------------------------------------- end-to-end helpers
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

#: a model and data small enough for a 2-epoch run in a few seconds on 2 cores
TINY_MODEL = [
    "model.hidden_dims=[32,16]",
    "model.latent_dim=4",
    "trainer.max_epochs=2",
    "callbacks.progress_bar.refresh_rate=0",
    "torch_threads=1",
]
TINY = ["data.num_states=600", "data.num_agents=30", *TINY_MODEL]


def train_cli(
    *args: str, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python train.py ARGS`` as a user would, from the repo root (``env``: variables to
    set on top of this process's environment)."""
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )


def only_run_dir(log_dir: Path, experiment: str) -> Path:
    """The single run directory of ``experiment`` under ``log_dir``."""
    runs = [p for p in (log_dir / experiment).iterdir() if p.is_dir() and p.name != "multirun"]
    assert len(runs) == 1, runs
    return runs[0]


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json."""
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    """Compose the tiny config in-process (Hydra compose API) with outputs under tmp_path."""
    from meaning_transform.api import load_config

    def make(*overrides: str, out: str = "run"):
        base = TINY_MODEL if "data=sqlite" in overrides else TINY
        return load_config([*base, "logger=none", f"paths.output_dir={tmp_path / out}", *overrides])

    return make


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny synthetic db (with NULLs in a coded feature) and a lossless model with context:
    (folder, db, best.ckpt), trained once for every codec and safety test."""
    from agentfarm_db import write_agentfarm_db
    from codec_helpers import train_lossless

    tmp = tmp_path_factory.mktemp("codec")
    db = tmp / "sim.db"
    write_agentfarm_db(db, 1500, num_agents=25, nulls={"resource_level": 4})
    ckpt = train_lossless(
        tmp / "run", "model.context=previous", "data=sqlite", f"data.path={db}",
        "data.drop_invalid=true",
    )  # fmt: skip
    return tmp, db, ckpt


# ---------------------------------------------------------------- MLflow (logger=mlflow)
def mlflow_client(uri: str):
    """MLflow's own client for the store at ``uri`` (reads back what a run logged)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="session")
def mlflow_empty_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store to copy where a run will log (a new one runs ~3 s of
    database migrations in every process that creates it)."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    mlflow_client(f"sqlite:///{path}").search_experiments()
    return path
