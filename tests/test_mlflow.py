"""``logger=mlflow``: runs written by ``train.py`` into a real MLflow store, read back by its client."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY, mlflow_client, only_run_dir, train_cli

from meaning_transform.callbacks.mlflow_tracking import (
    PARENT_RUN_FILE,
    PARENT_TAG,
    artifact_location,
    flatten,
    read_parent_run,
    tracking_uri,
)

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")

#: one epoch, no test split, no per-run plots: a second or two per job (latent_dim is swept)
SWEEP = [
    *(a for a in TINY if not a.startswith("model.latent_dim=")),
    "trainer.max_epochs=1",
    "test=false",
    "callbacks.curve_plotter=null",
]


def test_flatten_keeps_plain_lists_whole_and_indexes_lists_of_dicts():
    config = {"a": 1, "b": {"c": [32, 16], "d": None}, "e": [{"f": "x"}, {"f": "y", "g": [1]}]}
    assert dict(flatten(config)) == {
        "a": 1,
        "b.c": [32, 16],
        "b.d": None,
        "e.0.f": "x",
        "e.1.f": "y",
        "e.1.g": [1],
    }


def test_tracking_uri_is_the_setting_then_the_environment_then_sqlite_under_outputs(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking_uri(None, tmp_path) == "http://tracking:5000"
    assert tracking_uri("sqlite:////x/y.db", tmp_path) == "sqlite:////x/y.db"
    # artifacts beside a local SQLite store; a server decides for itself
    assert artifact_location("sqlite:////x/y.db") == "file:///x/mlartifacts"
    assert artifact_location("http://tracking:5000") is None
    assert artifact_location("sqlite:///:memory:") is None


@pytest.mark.parametrize(
    "content", ['{"run_id": "../../etc"}', '{"run_id": 7}', "[1]", "not json", None]
)
def test_a_parent_run_file_that_is_not_ours_names_no_parent(tmp_path, content):
    if content is not None:
        (tmp_path / PARENT_RUN_FILE).write_text(content)
    assert read_parent_run(tmp_path) is None


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_a_run_logs_params_every_epoch_metric_and_its_outputs(tmp_path, mlflow_empty_store):
    shutil.copy(
        mlflow_empty_store, tmp_path / "mlflow.db"
    )  # the default store: <paths.log_dir>/mlflow.db
    proc = train_cli(*TINY, "logger=mlflow", "experiment_name=tracked", f"paths.log_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path, "tracked")
    client = mlflow_client(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tracked")
    assert experiment.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["meaning_transform.output_dir"] == str(run_dir.resolve())

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert run.data.params == {k: str(v) for k, v in flatten(config)}
    assert run.data.params["model.hidden_dims"] == "[32, 16]"

    rows = _csv(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    names = [k for k in rows[0] if k != "epoch"]
    assert set(names) <= set(run.data.metrics)
    for name in names:
        history = client.get_metric_history(run.info.run_id, name)
        logged = {m.step: m.value for m in history}
        written = {int(r["epoch"]): float(r[name]) for r in rows if r[name] != ""}
        assert logged.keys() == written.keys(), name
        for epoch, value in written.items():  # the CSV keeps 8 significant digits
            assert math.isclose(logged[epoch], value, rel_tol=1e-6, abs_tol=1e-12), name

    summary = json.loads((run_dir / "summary.json").read_text())
    for name, value in summary["test"].items():
        assert math.isclose(run.data.metrics[name], value, rel_tol=1e-9), name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.yaml", "metrics.csv", "training_curves.png"} <= artifacts
    assert {"semantic_drift.png", "checkpoints"} <= artifacts
    ckpt = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert ckpt == ["checkpoints/best.ckpt"]
    assert not (Path.cwd() / "mlruns").exists()  # nothing in the working directory


@pytest.mark.slow
def test_sweep_jobs_are_nested_runs_of_one_parent_in_the_environments_store(
    tmp_path, mlflow_empty_store
):
    store = tmp_path / "elsewhere" / "runs.db"
    store.parent.mkdir()
    shutil.copy(mlflow_empty_store, store)
    proc = train_cli(
        "-m",
        "model.latent_dim=3,4,0",  # 0 fails: the job records it, the parent run ends FAILED
        *SWEEP,
        "logger=mlflow",
        "experiment_name=swept",
        f"paths.log_dir={tmp_path}",
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # a failed job: the sweep exits 1
    assert not (tmp_path / "mlflow.db").exists()
    client = mlflow_client(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("swept")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = sorted((r for r in runs if PARENT_TAG in r.data.tags), key=lambda r: r.info.run_name)
    assert parent.info.status == "FAILED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "sweep_summary.csv",
        "rate_drift.png",
    }
    assert [c.data.params["model.latent_dim"] for c in children] == ["3", "4"]
    assert [c.info.run_name.rsplit("/", 1)[1] for c in children] == ["0", "1"]
    for child in children:
        assert child.data.tags[PARENT_TAG] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val/loss")] == [1]
