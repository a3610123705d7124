"""The codec tests' shared pieces: a tiny trained lossless model and an independent check of a
restored database (both files read with sqlite3, not through the codec)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

TOLERANCE = {
    "position_x": 0.5, "position_y": 0.5, "resource_level": 1.0, "starvation_counter": 0.5,
    "current_health": 2.0, "starting_health": 2.0, "total_reward": 5.0, "age": 5.0,
}  # fmt: skip
KEYS = ("id", "agent_id", "step_number", "simulation_id")


def train_lossless(tmp: Path, *overrides: str) -> str:
    """best.ckpt of a 2-epoch lossless model (tiny)."""
    from meaning_transform import MeaningTrainer, load_config

    cfg = load_config(
        [
            "compression=lossless",
            "model.hidden_dims=[16]",
            "model.latent_dim=2",
            "trainer.max_epochs=2",
            "logger=none",
            "torch_threads=1",
            "callbacks.progress_bar.refresh_rate=0",
            f"paths.output_dir={tmp}",
            *overrides,
        ]
    )
    return MeaningTrainer(cfg).train()["best_model_path"]


def assert_same_meaning(original: Path, restored: Path) -> int:
    """Every key exact, every feature within tolerance, NULLs kept, agent types kept."""
    with closing(sqlite3.connect(original)) as a, closing(sqlite3.connect(restored)) as b:
        cols = [r[1] for r in a.execute("PRAGMA table_info(agent_states)")]
        assert [r[1] for r in b.execute("PRAGMA table_info(agent_states)")] == cols
        sql = f"SELECT {', '.join(cols)} FROM agent_states ORDER BY id"
        rows_a, rows_b = a.execute(sql).fetchall(), b.execute(sql).fetchall()
        assert len(rows_a) == len(rows_b) > 0
        for ra, rb in zip(rows_a, rows_b, strict=True):
            for c, va, vb in zip(cols, ra, rb, strict=True):
                if c in KEYS or va is None or c not in TOLERANCE:
                    assert va == vb, (c, va, vb)
                else:
                    assert vb is not None and abs(va - vb) <= TOLERANCE[c] * (1 + 1e-4), (c, va, vb)
        types_a = dict(a.execute("SELECT agent_id, agent_type FROM agents"))
        types_b = dict(b.execute("SELECT agent_id, agent_type FROM agents"))
        assert types_b == {k: types_a[k] for k in types_b} and len(types_b) > 0
    return len(rows_a)
