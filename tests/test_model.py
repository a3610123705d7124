"""The model end to end: decoder heads, bottleneck rates, checkpoints, and that training learns.

Every run is a real Lightning run on small synthetic data (``prepare``/``run`` from the training
app), so these tests exercise the same code path as ``python train.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from meaning_transform.api import load_config
from meaning_transform.assemble import prepare
from meaning_transform.data import generate_synthetic
from meaning_transform.models.bottlenecks.entropy import code_jointly
from meaning_transform.models.bottlenecks.vq import UsageCoder as VQUsage
from meaning_transform.module import MeaningModule
from meaning_transform.training import run

BOTTLENECKS = ("entropy", "vq", "none")
# Lean runs: no plots, no progress bar, no logger files, no test pass, fixed epoch count.
QUIET = (
    "logger=none",
    "callbacks.curve_plotter=null",
    "callbacks.progress_bar=null",
    "callbacks.early_stopping=null",
    "callbacks.periodic_checkpoint=null",
    "callbacks.model_checkpoint=null",
    "test=false",
)
SMALL = ("data.num_states=1200", "data.num_agents=40", "model.hidden_dims=[64,32]")


def _cfg(tmp_path: Path, *overrides: str) -> Any:
    return load_config([*QUIET, *overrides, f"paths.output_dir={tmp_path}"])


def _fit(module: MeaningModule, datamodule: Any, **trainer_kwargs: Any) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Small models run fastest on one thread, and timings do not depend on the machine load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_decoder_heads_follow_the_schema(tmp_path: Path) -> None:
    _, dm, module, _ = prepare(_cfg(tmp_path, *SMALL))
    schema = module.schema
    heads, _, _ = module(dm.train_x[:16])
    assert heads.shape == (16, schema.head_dim)
    widths = {name: sl.stop - sl.start for name, sl in schema.head_slices.items()}
    for f in schema.features:
        want = schema.vocab_size(f) if f.kind == "categorical" else 1
        assert widths[f.name] == want, f.name
    assert schema.feature("agent_type").kind == "categorical"
    assert widths["agent_type"] == 3  # system, independent, control
    # the slices tile the decoder output exactly, in schema order
    starts = [sl.start for sl in schema.head_slices.values()]
    assert starts == sorted(starts) and sum(widths.values()) == schema.head_dim


@pytest.mark.parametrize("bottleneck", BOTTLENECKS)
def test_rate_is_finite_and_positive(tmp_path: Path, bottleneck: str) -> None:
    _, dm, module, _ = prepare(_cfg(tmp_path, *SMALL, f"compression={bottleneck}"))
    x = dm.train_x[:128]
    for training in (True, False):
        module.train(training)
        with torch.no_grad():
            _, _, out = module(x)
        assert out.rate_bits.shape == (128,)
        assert torch.isfinite(out.rate_bits).all(), (bottleneck, training)
        assert out.rate_bits.mean() > 0, (bottleneck, training)
        assert torch.isfinite(out.rate_loss) and torch.isfinite(out.aux_loss)


def test_table_api_refuses_a_model_that_reads_the_previous_state(tmp_path: Path) -> None:
    _, _, module, _ = prepare(_cfg(tmp_path, *SMALL, "model.context=previous"))
    table = generate_synthetic(8, seed=1)
    for call in (module.encode, module.reconstruct):
        with pytest.raises(ValueError, match=r"model.context=previous\): code batches"):
            call(table)


def test_checkpoint_restores_the_model_alone(tmp_path: Path) -> None:
    _, dm, module, _ = prepare(_cfg(tmp_path, *SMALL))
    trainer = _fit(module, dm, max_epochs=2)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    loaded = MeaningModule.load_from_checkpoint(path)  # nothing else: schema, model, bottleneck
    table = generate_synthetic(64, seed=123)
    codes = module.encode(table)
    torch.testing.assert_close(loaded.encode(table), codes, rtol=0, atol=0)
    assert codes.shape == (64, module.codec.latent_dim + len(module.schema.features))
    a, b = module.decode(codes), loaded.decode(codes)
    r1, r2 = module.reconstruct(table), loaded.reconstruct(table)
    for out in (a, b, r1, r2):
        assert set(out) >= set(loaded.schema.names)
    for name in loaded.schema.names:
        np.testing.assert_array_equal(a[name], b[name])
        np.testing.assert_array_equal(r1[name], r2[name])

    # native units and real category strings, not normalized values or indices
    assert all(isinstance(v, str) for v in r2["agent_type"])
    assert set(r2["agent_type"]) <= {"system", "independent", "control"}
    assert set(np.unique(r2["is_defending"])) <= {0.0, 1.0}
    health = np.asarray(r2["current_health"], dtype=float)
    assert 20 < health.mean() < 150  # hp (data: 0..100), far from a normalized ~0
    age = np.asarray(r2["age"], dtype=float)
    assert age.std() > 1  # steps, not standardized units


@pytest.mark.parametrize("bottleneck", BOTTLENECKS)
def test_learned_path_learns_when_overfitting(tmp_path: Path, bottleneck: str) -> None:
    """Without the grid path, the encoder/bottleneck/decoder alone learns to reconstruct."""
    cfg = _cfg(
        tmp_path,
        *SMALL,
        f"compression={bottleneck}",
        "model.grid_path.enabled=false",
        "callbacks.last_checkpoint=null",
        "+trainer.overfit_batches=2",
        "trainer.max_epochs=25",
        "optimizer.lr=0.003",
        "scheduler=none",
    )
    if bottleneck == "vq":
        cfg.compression.num_embeddings = 16  # <= states per batch: every code can be used
    rows = run(cfg)["train_losses"]
    assert len(rows) == 25
    first, last = rows[0], rows[-1]
    # Measured (1,200 states, 2 batches, 25 epochs): loss and recon fall to 0.62-0.69x (entropy,
    # vq). recon counts states outside tolerance, which falls slower than an MSE (half a cell on
    # a 50-cell grid is a hard target for an MLP); an untrained or broken model stays at ~1x.
    assert last["loss"] < 0.8 * first["loss"], (first, last)
    # none: its KL (loss.kl_weight=0.1 per nat) keeps the VAE near one nat per state, so recon
    # only falls to ~0.89x.
    ratio = 0.95 if bottleneck == "none" else 0.8
    assert last["recon"] < ratio * first["recon"], (first, last)


@pytest.mark.slow
def test_tiny_model_overfit_on_200_states_reaches_drift_zero(tmp_path: Path) -> None:
    """End to end through train.py's code path: 200 states, every split's drift exactly 0."""
    cfg = _cfg(
        tmp_path,
        "data.num_states=200",
        "data.num_agents=10",
        "model.hidden_dims=[16]",
        "model.latent_dim=2",
        "trainer.max_epochs=5",
        "test=true",
    )
    summary = run(cfg)
    assert summary["drift"] == 0.0
    assert summary["test"]["test/drift"] == 0.0
    assert all(row["val/drift"] == 0.0 for row in summary["history"])


def test_entropy_levels_give_strictly_fewer_bits(tmp_path: Path) -> None:
    """compression.level 1 < 16 < 64 -> strictly fewer measured bits per state."""
    bits = []
    for level in (1.0, 16.0, 64.0):
        cfg = _cfg(
            tmp_path / str(level),
            *SMALL,
            "data.num_states=2000",
            "trainer.max_epochs=6",
            f"compression.level={level}",
            "callbacks.last_checkpoint=null",
        )
        bits.append(run(cfg)["history"][-1]["val/rate_bits"])
    assert all(np.isfinite(bits)), bits
    assert all(a > b for a, b in zip(bits, bits[1:], strict=False)), bits


def test_vq_uses_most_of_a_64_code_codebook(tmp_path: Path) -> None:
    """5,000 states, K=64: more than half the codes in use (it used to collapse or churn).
    Nearest-code VQ (usage_weight 0): the ECVQ term concentrates usage on purpose."""
    cfg = _cfg(
        tmp_path,
        "data.num_states=5000",
        "compression=vq",
        "compression.num_embeddings=64",
        "compression.usage_weight=0",
        "trainer.max_epochs=3",
        "callbacks.last_checkpoint=null",
    )
    cfg, dm, module, _ = prepare(cfg)
    _fit(module, dm, max_epochs=3)
    module.eval()
    with torch.no_grad():
        _, _, out = module(dm.train_x)
    counts = torch.bincount(out.codes, minlength=64)
    used = int((counts > 0).sum())
    assert used > 32, counts.tolist()
    # and spread out, not a few codes with everything: usage entropy above 4 of 6 bits
    p = counts[counts > 0].double() / counts.sum()
    assert -(p * p.log2()).sum() > 4.0, counts.tolist()
    # the really coded size covers the indices, under the codebook's training usage table
    report = module.code(dm.rows("test"))
    assert report["coded"][0] == "vq indices" and report["exact"], report
    grid_only = code_jointly([p for p in module.grid.coding_parts(dm.rows("test"))])
    index_bits = report["coded_bits_per_state"] - grid_only.coded_bits_per_state
    assert 2.0 < index_bits <= 6.1, (report, grid_only)  # ~usage entropy, at most log2(64)


@pytest.mark.parametrize("bottleneck", ["entropy", "vq"])
def test_code_with_context_prices_what_forward_prices(tmp_path: Path, bottleneck: str) -> None:
    """model.context=previous with a lossy bottleneck: the test rows (state, previous state,
    flag) are really coded, exactly, and the estimate is the forward pass's rate on them (the
    encoder read its context in both; it used to get the state alone and fail on the shapes)."""
    cfg = _cfg(tmp_path, *SMALL, f"compression={bottleneck}", "model.context=previous")
    _, dm, module, _ = prepare(cfg)
    rows = dm.rows("test")
    report = module.code(rows)
    with torch.no_grad():
        _, _, out = module(*module.unpack(rows))
    assert report["exact"] and report["num_states"] == rows.shape[0], report
    assert report["estimated_bits_per_state"] == pytest.approx(float(out.rate_bits.mean()), 1e-4)


def test_usage_coder_codes_indices_under_its_table() -> None:
    """Counts 3:1 -> p ~ 0.75/0.25 (floored by 1e-3 of a uniform share): 0,0,0,1 cost
    3 * 0.415 + 2 bits, and they come back exactly."""
    coder = VQUsage(torch.tensor([[3.0, 1.0]]))
    codes = torch.tensor([[0], [0], [0], [1]])
    assert coder.estimate_bits(codes) == pytest.approx(3 * math.log2(4 / 3) + 2, abs=1e-2)
    report = code_jointly([(coder, codes)])
    assert report.exact and report.num_states == 4
    unseen = VQUsage(torch.tensor([5.0, 0.0]))  # a code training never used is still codable
    assert code_jointly([(unseen, torch.tensor([[1], [0]]))]).exact
