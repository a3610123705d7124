"""The Python API: the docs' examples run verbatim, multi-stage training, evaluation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from doc_blocks import examples

from meaning_transform.errors import ConfigError
from meaning_transform.evaluate import evaluate_checkpoint
from meaning_transform.evaluate import main as evaluate_main
from meaning_transform.training import run

pytestmark = pytest.mark.slow


def test_the_docs_have_the_examples():
    kinds = [(doc, kind) for doc, kind, _, _ in examples()]
    assert kinds.count(("README.md", "run")) == 1  # the Python API, in the tour
    assert [k for _, k in kinds].count("run") == 3 and [k for _, k in kinds].count("file") == 3


#: runs each doc example given as an argument, in order, in a fresh namespace each: one
#: Python process for all of them (each one's own would import torch and Lightning again)
RUN_EXAMPLES = """
import sys, traceback
for i, code in enumerate(sys.argv[1:]):
    try:
        exec(compile(code, f"<doc example {i}>", "exec"), {"__name__": "__main__"})
    except BaseException:
        print(f"example {i} failed:\\n{code}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def test_doc_examples_run_verbatim(tmp_path):
    elsewhere = tmp_path / "elsewhere"  # not where the example files are: any directory works
    elsewhere.mkdir()
    runs = []
    for _, kind, name, code in examples():
        if kind == "file":
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(code)
        else:
            runs.append(code)
    assert len(runs) == 3
    proc = subprocess.run(
        [sys.executable, "-c", RUN_EXAMPLES, *runs],
        cwd=elsewhere,
        env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = list((elsewhere / "outputs").rglob("summary.json"))
    assert len(summaries) == 4  # basic, two stages, extensions
    ext = [json.loads(p.read_text()) for p in summaries]
    custom = [s for s in ext if s["compression"] == "FixedBitsQuantizer"]
    assert len(custom) == 1
    row = custom[0]["history"][-1]
    assert row["val/rate_bits_latent"] == pytest.approx(32 * 4)  # default latent_dim x 4 bits
    assert "val/latent_norm" in row and "train/latent_l1" in row
    assert set(custom[0]["drift_groups"]) == {"spatial", "status"}


def test_stage_two_changes_weights_and_starts_lower(tiny_cfg):
    from meaning_transform.api import MeaningTrainer

    cfg = tiny_cfg("test=false", "trainer.max_epochs=3")
    trainer = MeaningTrainer(cfg)
    cfg.loss.rate_weight = 0.001
    cfg.loss.kl_weight = 1.0
    s1 = trainer.train()
    cfg.loss.rate_weight = 0.01
    cfg.loss.kl_weight = 0.1  # the encoder is deterministic: no effect, so not reported
    cfg.loss.semantic_weight = 1.0
    s2 = trainer.train(init_from=s1["best_model_path"])
    assert s1["train_losses"][0]["weight/rate"] == pytest.approx(0.001)
    assert s2["train_losses"][0]["weight/rate"] == pytest.approx(0.01)
    assert s2["train_losses"][0]["weight/semantic"] == pytest.approx(1.0)
    assert s2["changed_loss_weights"] == {
        "semantic_weight": [0.5, 1.0],
        "rate_weight": [0.001, 0.01],
    }
    assert s2["stage"] == 2 and s2["parent_run"]["stage"] == 1
    assert s2["init_from"] == s1["best_model_path"]
    assert s1["experiment_dir"] != s2["experiment_dir"]
    s3 = trainer.train(resume_from=s2["last_model_path"])  # a stage is max_epochs long
    assert s3["resumed_from"] == s2["last_model_path"] and s3["epochs_run"] == 6
    assert [r["epoch"] for r in s3["train_losses"]] == [1, 2, 3, 4, 5, 6]
    cfg.model.latent_dim = 0
    with pytest.raises(ConfigError):
        trainer.train()
    assert trainer.stage == 3  # a failed train() is not a stage
    cfg.model.latent_dim = 4
    assert trainer.train()["stage"] == 4


def test_seed_api_names(tiny_cfg):
    from meaning_transform import Config, Trainer

    config = tiny_cfg("test=false")
    assert type(config) is type(Config())
    config.training.num_epochs = 2  # the seed document's names, as written there
    config.training.kl_loss_weight = 0.3
    config.training.semantic_loss_weight = 0.7
    config.model.latent_dim = 4
    config.data.num_states = 500
    results = Trainer(config).train()
    assert results["epochs_run"] == 2
    assert results["train_losses"][0]["weight/semantic"] == pytest.approx(0.7)
    assert results["train_losses"][0]["weight/kl"] == pytest.approx(0.3)
    assert config.training.num_epochs == 2 and "training" not in results["history"][0]


def test_evaluate_reproduces_logged_drift(tiny_cfg, tmp_path):
    summary = run(tiny_cfg("trainer.max_epochs=3"))
    logged = next(r for r in summary["history"] if r["epoch"] == summary["best_epoch"])
    report = evaluate_checkpoint(summary["best_model_path"], split="val")
    for key in ("drift", "preservation", "rate_bits", "drift_group/spatial", "drift/position_x"):
        assert report["metrics"][key] == pytest.approx(logged[f"val/{key}"], abs=1e-6), key
    assert report["coding"]["exact"] and report["coding"]["num_bytes"] > 0
    assert summary["test_coding"]["exact"]
    out = tmp_path / "report.json"
    assert (
        evaluate_main([f"ckpt_path={summary['best_model_path']}", "split=test", f"output={out}"])
        == 0
    )
    written = json.loads(out.read_text())
    assert written["split"] == "test"
    # the classical baselines of the evaluated split: the same numbers the run reported
    assert written["baselines"] == summary["baselines"]
    assert report["baselines"]["num_states"] == report["num_states"]


def test_evaluate_bad_input_is_one_line(capsys, tmp_path):
    assert evaluate_main([f"ckpt_path={tmp_path / 'nope.ckpt'}"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ckpt_path=") and "no such checkpoint" in err and err.count("\n") == 1
    )
    assert evaluate_main([]) == 2
    assert "ckpt_path is required" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
