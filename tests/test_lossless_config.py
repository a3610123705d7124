"""compression=lossless and model.context compose, build and run with every bottleneck."""

from __future__ import annotations

import pytest
import torch

from meaning_transform.cli import compose_checked
from meaning_transform.errors import ConfigError
from meaning_transform.training import prepare


@pytest.mark.parametrize(
    "overrides",
    [
        ["compression=lossless"],
        ["compression=lossless", "model.context=previous"],
        ["compression=lossless", "model.context=history"],
        ["compression=entropy", "model.context=previous"],
        ["compression=vq", "model.context=previous"],
        ["compression=none", "model.context=previous"],
    ],
)
def test_composes_builds_and_steps(tiny_cfg, overrides) -> None:
    cfg, datamodule, module, _ = prepare(tiny_cfg(*overrides))
    batch = next(iter(datamodule.train_dataloader()))
    f = len(datamodule.schema.features)
    context = next((o.split("=")[1] for o in overrides if o.startswith("model.context")), None)
    assert batch.shape[1] == {None: f, "previous": 2 * f + 1, "history": 3 * f + 1}[context]
    assert datamodule.context == context
    module.train()
    total, *_, out = module._step(batch, 0.0)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(out.rate_bits).all()
    if "compression=lossless" in overrides:
        assert type(module.codec).__name__ == "LosslessCodec" and module.grid is None


@pytest.mark.parametrize("context", ["previous", "history"])
def test_lossless_drift_is_zero_and_coding_exact(tiny_cfg, context) -> None:
    _, datamodule, module, _ = prepare(tiny_cfg("compression=lossless", f"model.context={context}"))
    module.eval()
    rows = datamodule.rows("val")
    module._eval_step("val", rows)
    assert float(module.drift["val"].compute()["drift"]) == 0.0
    report = module.code(datamodule.rows("train"))  # enough states that 32-bit words are noise
    assert (
        report["exact"]
        and abs(report["coded_bits_per_state"] / report["estimated_bits_per_state"] - 1) < 0.01
    )


def test_bad_context_and_lossless_with_grid_path_are_one_line_errors(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="model.context='next' is invalid"):
        prepare(tiny_cfg("model.context=next"))
    with pytest.raises(ConfigError, match="history needs compression=lossless"):
        prepare(tiny_cfg("model.context=history"))
    with pytest.raises((ConfigError, ValueError), match="grid_path.enabled=false"):
        prepare(tiny_cfg("compression=lossless", "model.grid_path.enabled=true"))


def test_codec_config_composes() -> None:
    cfg = compose_checked("codec", ["in=a.mtc", "out=b.db", "data.path=x.db", "chunk_size=8"])
    assert cfg["in"] == "a.mtc" and cfg.data.path == "x.db" and cfg.chunk_size == 8
    with pytest.raises(ConfigError, match="no such key"):
        compose_checked("codec", ["chunksize=3"])
