"""The registry of classes a file's config may name, and its checks (unit level)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pytest

from meaning_transform.errors import CheckpointError
from meaning_transform.registry import Registry, check_plain, fits, packaged_targets
from meaning_transform.report import kind_of


def test_packaged_targets_are_the_config_groups_classes():
    found = packaged_targets()
    assert set(found["model"]) == {
        "meaning_transform.models.mlp.MLPCodec",
        "meaning_transform.models.lossless.LosslessCodec",
    }
    assert "meaning_transform.models.bottlenecks.vq.VQBottleneck" in found["compression"]
    assert found["optimizer"] == {"torch.optim.Adam": True, "torch.optim.AdamW": True}
    assert "meaning_transform.losses.RateLoss" in found["loss_term"]
    assert set(found["data"]) == {
        "meaning_transform.data.SyntheticDataModule",
        "meaning_transform.data.SQLiteDataModule",
    }
    assert "lightning.Trainer" not in {t for slot in found.values() for t in slot}


@pytest.mark.parametrize(
    "value, annotation, ok",
    [
        (3, int, True),
        (True, int, False),
        (3, float, True),
        ("3", float, False),
        (None, float | None, True),
        ([1, 2], Sequence[int], True),
        ([1, "2"], Sequence[int], False),
        ((0.9, 0.99), tuple[float, float], True),
        ([0.9], tuple[float, float], False),
        ("x", str | None, True),
    ],
)
def test_fits_checks_annotated_types(value, annotation, ok):
    assert fits(value, annotation) is ok


@pytest.mark.parametrize(
    "value, message",
    [
        ({"a": {"_target_": "os.system"}}, "x.a._target_: refused"),
        ({"a": [1, {"_args_": []}]}, "x.a[1]._args_: refused"),
        ({"a": "${oc.env:HOME}"}, "x.a: refused: an interpolation"),
        ({"a": float("nan")}, "x.a: nan is not a finite number"),
        ({"a": "y" * 5000}, "a string of 5000 characters"),
        ({"a": b"bytes"}, "a bytes, not plain data"),
    ],
)
def test_check_plain_refuses_what_a_file_may_not_bring(value, message):
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("$", r"\$")):
        check_plain(value, "x")


def test_registry_refuses_unknown_targets_keys_and_sizes():
    registry = Registry()
    ok = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001}
    assert registry.check("optimizer", ok, "f: optimizer") == ok
    cases = [
        ("optimizer", {"_target_": "pathlib.Path.write_text"}, "is not a class this project builds"),
        ("model", {"_target_": "torch.optim.Adam"}, "is not a class this project builds"),
        ("optimizer", {**ok, "sneaky": 1}, "Adam has no parameter 'sneaky'"),
        ("optimizer", {**ok, "lr": -1.0}, "optimizer.lr: -1.0 is invalid"),
        ("compression", {"_target_": "meaning_transform.models.bottlenecks.entropy.EntropyBottleneck", "_partial_": True}, "not a partial config"),
        ("model", {"_target_": "meaning_transform.models.mlp.MLPCodec", "hidden_dims": [24576]}, "above 4,096"),
        ("model", {"_target_": "meaning_transform.models.mlp.MLPCodec", "latent_dim": "8"}, "is not of type"),
    ]  # fmt: skip
    for slot, node, message in cases:
        with pytest.raises(CheckpointError, match=message):
            registry.check(slot, node, f"f: {slot}")
    mine = Registry(["fractions.Fraction"])  # the user's own choice, in their own config
    assert mine.check("model", {"_target_": "fractions.Fraction", "numerator": 3}, "f")


def test_a_sweep_folder_cannot_make_the_report_import_a_module():
    sys.modules.pop("antigravity", None)
    assert kind_of("antigravity.Fly") == "Fly"
    assert "antigravity" not in sys.modules
    assert kind_of("meaning_transform.models.bottlenecks.vq.VQBottleneck") == "vq"


def test_a_checkpoint_that_predates_a_setting_says_how_to_resume() -> None:
    from meaning_transform.checkpoint_reader import _hparam_hint

    theirs = {"compression": {"level": 1.0}, "model": {"grid_path": {"init_k": 1.0}}}
    ours = {
        "compression": {"level": 1.0, "usage_weight": 1.0},
        "model": {"grid_path": {"init_k": 2.0, "prior_mixture": False}},
    }
    assert _hparam_hint(theirs, ours) == (
        " (config differs: model.grid_path.init_k: checkpoint 1.0, config 2.0); the checkpoint "
        "predates compression.usage_weight: resume with compression.usage_weight=0.0"
    )
    ours["compression"]["usage_weight"] = 0.0  # as it was trained: nothing to say about it
    assert "usage_weight" not in _hparam_hint(theirs, ours)
