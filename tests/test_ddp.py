"""``trainer=ddp`` (2 CPU processes, gloo): one run directory, rank-0 files, synced metrics."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, read_summary, train_cli

pytestmark = pytest.mark.slow

#: validates a checkpoint on its run's validation split; rank 0 writes the metrics as JSON.
#: Run as a script: Lightning's ddp starts rank 1 by running it again.
VALIDATE = """
import json, sys
import lightning as L
from hydra.utils import instantiate
from omegaconf import OmegaConf
from meaning_transform.module import MeaningModule

run_dir, out, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
module = MeaningModule.load_from_checkpoint(f"{run_dir}/checkpoints/best.ckpt", map_location="cpu")
cfg = OmegaConf.load(f"{run_dir}/config.yaml")
datamodule = instantiate(cfg.data, schema=module.schema.to_dict())
datamodule.setup("validate")
# an odd split: Lightning's DistributedSampler would pad it by repeating a state (counted twice)
odd = (len(datamodule.val_x) - 1) // 2 * 2 + 1
datamodule.val_x, datamodule.val_agents = datamodule.val_x[:odd], datamodule.val_agents[:odd]
trainer = L.Trainer(
    accelerator="cpu",
    devices=devices,
    strategy="ddp" if devices > 1 else "auto",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)
(metrics,) = trainer.validate(module, datamodule=datamodule, verbose=False)
if trainer.is_global_zero:
    json.dump({"n_val": len(datamodule.val_x), "world_size": trainer.world_size,
               "metrics": {k: float(v) for k, v in metrics.items()}}, open(out, "w"))
"""


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A 2-epoch ``trainer=ddp`` run of train.py (its run dir, its process)."""
    log_dir = tmp_path_factory.mktemp("ddp")
    proc = train_cli(*TINY, "trainer=ddp", "experiment_name=ddp", f"paths.log_dir={log_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list(log_dir.rglob("summary.json"))
    assert len(runs) == 1, runs  # one run directory, one summary
    return runs[0].parent, proc


def csv_lines(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_ddp_run_has_one_run_dir_written_by_rank_0(ddp_run):
    run_dir, proc = ddp_run
    assert [p for p in run_dir.parent.iterdir()] == [run_dir]
    # Lightning re-launched train.py for rank 1 with hydra.run.dir=<this dir> (its Hydra job
    # log is the one rank-1 file) and hydra.output_subdir=null, so .hydra/ is rank 0's
    assert (run_dir / "train_ddp_process_1.log").is_file()
    hydra_cfg = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_cfg["job"]["name"] == "train"
    assert hydra_cfg["runtime"]["output_dir"] == str(run_dir)
    files = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}
    assert files == {
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
        "train.log",
        "train_ddp_process_1.log",
        "config.yaml",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "metrics.csv",
        "semantic_drift.csv",
        "training_curves.png",
        "semantic_drift.png",
        "logs/csv/hparams.yaml",
        "logs/csv/metrics.csv",
        "summary.json",
    }
    # one row per epoch, nothing interleaved by a second writer
    for name in ("metrics.csv", "semantic_drift.csv"):
        head, *rows = csv_lines(run_dir / name)
        assert [r[0] for r in rows] == ["1", "2"], name
        assert all(len(r) == len(head) for r in rows), name
    head, *rows = csv_lines(run_dir / "logs/csv/metrics.csv")
    assert all(len(r) == len(head) for r in rows)
    assert len({tuple(r) for r in rows}) == len(rows)
    summary = read_summary(run_dir)
    assert summary["experiment_dir"] == str(run_dir.resolve())
    assert summary["epochs_run"] == 2 and summary["test"]["test/drift"] >= 0
    # rank 1's stdout/stderr are the same pipes: the final report is printed once
    out = proc.stdout + proc.stderr
    assert out.count("best val/loss:") == 1
    assert out.count(f"run directory: {run_dir}") == 2  # at start and at the end, rank 0 only
    # how the data was read: said once, by rank 0 (rank 1 reads it again, quietly)
    assert out.count("optional feature 'position_z' dropped") == 1
    # no per-rank Lightning notices, no advice to test on one device (each state counts once)
    assert "Initializing distributed" not in out and "DistributedSampler" not in out


def test_ddp_validation_equals_single_process(ddp_run, tmp_path):
    """The same checkpoint and data: 2 ranks (synced metrics) give the 1-process numbers."""
    run_dir, _ = ddp_run
    script = tmp_path / "validate.py"
    script.write_text(VALIDATE)
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"val_{devices}.json"
        proc = subprocess.run(
            [sys.executable, str(script), str(run_dir), str(out), str(devices)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[devices] = json.loads(out.read_text())
    assert results[2]["world_size"] == 2
    # an odd split: the 2 ranks still see each state exactly once between them
    assert results[1]["n_val"] == results[2]["n_val"] > 100
    assert results[1]["n_val"] % 2 == 1
    single, ddp = results[1]["metrics"], results[2]["metrics"]
    assert set(single) == set(ddp)
    # Both runs compute in float32 and sum in a different order (two partial sums added, vs. one
    # running sum), so they agree to float32 rounding, not bit for bit: about 1e-7 relative per
    # addition, growing with the number of batches summed. A relative tolerance of 1e-5 is that
    # rounding with room to spare (rate_bits ~10 differed by 1e-6 absolute) and still far below
    # the errors this test is for (a state counted twice or dropped, a metric not synced across
    # ranks), which move these by orders of magnitude more.
    float32_sums = {"rel": 1e-5, "abs": 1e-7}
    for key in ("val/drift", "val/preservation", "val/rate_bits", "val/drift_group/spatial"):
        # counts and sums synced across ranks (torchmetrics)
        assert ddp[key] == pytest.approx(single[key], **float32_sums), key
    for key in ("val/loss", "val/recon", "val/semantic"):
        # mean over ranks of per-rank means: equal to the overall mean for equal halves
        assert ddp[key] == pytest.approx(single[key], **float32_sums), key


def test_ddp_inside_a_multirun_fails_before_training(tmp_path):
    proc = train_cli(
        "-m", *TINY, "trainer=ddp", "seed=1", "experiment_name=mr", f"paths.log_dir={tmp_path}"
    )
    assert proc.returncode == 1
    (sweep,) = (tmp_path / "mr" / "multirun").iterdir()  # no second sweep started by a rank 1
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert "cannot run inside a Hydra multirun" in failed["error"]
    assert not (sweep / "0" / "checkpoints").exists()
