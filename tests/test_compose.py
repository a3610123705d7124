"""Every config group option and every experiment / search file composes, validates and builds."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from meaning_transform.api import load_config
from meaning_transform.config import CONF_DIR, validate_config
from meaning_transform.errors import ConfigError

GROUPS = [
    "data",
    "schema",
    "model",
    "compression",
    "loss",
    "optimizer",
    "scheduler",
    "callbacks",
    "logger",
    "trainer",
    "debug",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


CASES = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize("group, option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}"]
    if group == "data" and option == "sqlite":
        db = tmp_path / "x.db"
        db.touch()
        overrides.append(f"data.path={db}")
    cfg = load_config(overrides)
    validate_config(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("name", options("experiment") or ["<none>"])
def test_every_experiment_composes(name, tmp_path):
    if name == "<none>":
        pytest.skip("no experiment files")
    cfg = load_config([f"experiment={name}", f"paths.output_dir={tmp_path}"])
    validate_config(cfg)
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("name", options("hparams_search") or ["<none>"])
def test_every_hparams_search_composes(name, tmp_path):
    if name == "<none>":
        pytest.skip("no search files")
    cfg = load_config([f"hparams_search={name}", f"paths.output_dir={tmp_path}"])
    validate_config(cfg)


@pytest.mark.parametrize("compression", options("compression"))
def test_bottleneck_and_optimizer_instantiate(compression):
    cfg = load_config([f"compression={compression}"])
    bottleneck = instantiate(cfg.compression, latent_dim=cfg.model.latent_dim)
    assert bottleneck.level == cfg.compression.level
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = instantiate(cfg.optimizer)(params=params)
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    for name, node in cfg.callbacks.items():
        instantiate(node) if name != "curve_plotter" else None


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.latent_dim=0", "model.latent_dim=0 is invalid: expected an integer >= 1"),
        ("optimizer.lr=-1", "optimizer.lr=-1 is invalid: expected a number > 0"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is invalid: expected an integer >= 1"),
        ("compression.level=0", "compression.level=0 is invalid: expected a number > 0"),
        ("data.batch_size=0", "data.batch_size=0 is invalid"),
        ("data.num_states=-5", "data.num_states=-5 is invalid"),
        ("loss.kl_weight=-0.1", "loss.kl_weight=-0.1 is invalid"),
        ("seed=-1", "seed=-1 is invalid"),
        ("ckpt_path=/nonexistent.ckpt", "ckpt_path='/nonexistent.ckpt' is invalid: no such"),
        ("experiment_name=..", "experiment_name='..' is invalid: expected one folder name"),
        ("experiment_name=a/b", "experiment_name='a/b' is invalid"),
        ("scheduler.T_max=0", "scheduler.T_max=0 is invalid: expected an integer >= 1"),
        ("scheduler=step scheduler.step_size=0", "scheduler.step_size=0 is invalid"),
        ("data.val_fraction=0", "data.val_fraction=0 leaves no validation split"),
        (
            "model.grid_path.init_k=0.5",
            "model.grid_path.init_k=0.5 is invalid: expected a number >= 1",
        ),
        ("loss.sharpness=0", "loss.sharpness=0 is invalid: expected a number > 0"),
        ("loss.huber_weight=-1", "loss.huber_weight=-1 is invalid"),
        (
            "compression=vq compression.usage_temperature=0",
            "compression.usage_temperature=0 is invalid: expected a number > 0",
        ),
    ],
)
def test_bad_values_fail_validation_with_one_line(override, message):
    cfg = load_config(override.split())
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_seed_zero_is_a_seed():
    cfg = load_config(["seed=0"])
    validate_config(cfg)
    assert cfg.seed == 0


def test_typo_override_is_rejected_by_hydra():
    with pytest.raises(Exception, match="Could not override 'model.latnt_dim'"):
        load_config(["model.latnt_dim=3"])


def test_struct_mode_rejects_unknown_keys():
    cfg = load_config()
    with pytest.raises(Exception, match="latnt_dim"):
        cfg.model.latnt_dim = 3


def test_monitor_is_defined_once_and_interpolated():
    cfg = load_config(["monitor.metric=val/drift"])
    assert cfg.callbacks.model_checkpoint.monitor == "val/drift"
    assert cfg.callbacks.early_stopping.monitor == "val/drift"
    assert cfg.optimized_metric == "val/drift"


@pytest.mark.parametrize(
    "launcher, target",
    [("joblib", "JoblibLauncher"), ("submitit_slurm", "SlurmLauncher")],
)
def test_launchers_compose(launcher, target):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            overrides=[f"hydra/launcher={launcher}", "hydra.sweep.dir=/tmp/x"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith(target)
