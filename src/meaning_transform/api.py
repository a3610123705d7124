"""The Python API: compose the config without the CLI, train in stages, get results as a dict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from meaning_transform.config import CONF_DIR, SEED_ALIASES, apply_seed_aliases


def load_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The composed ``conf/train.yaml`` (plus Hydra-style ``overrides``), in struct mode.

    Attribute access and assignment work (``cfg.model.latent_dim = 32``); setting a key that does
    not exist raises. The seed document's names work too: ``cfg.training.num_epochs`` is
    ``trainer.max_epochs``, ``cfg.training.kl_loss_weight`` is ``loss.kl_weight`` (see
    ``config.SEED_ALIASES``). Values are validated when training starts.
    """
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="api"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    if config_name == "train":
        with open_dict(cfg):
            for alias, key in SEED_ALIASES.items():  # reads follow the key; writes are mapped
                OmegaConf.update(cfg, alias, f"${{{key}}}", force_add=True)
    OmegaConf.set_struct(cfg, True)
    return cfg


class MeaningTrainer:
    """Drives training from Python; each ``train()`` call is one stage with its own run dir.

    Run dirs: ``outputs/<experiment_name>/<timestamp>/`` per stage, or, when
    ``cfg.paths.output_dir`` is set, ``<output_dir>/stage_<n>/``. A stage trains
    ``trainer.max_epochs`` epochs, also when it resumes another (``resume_from``); a ``train()``
    that fails is not a stage.

    Not Lightning's ``Trainer``: this wraps the whole run (data, model, callbacks, outputs) and
    reads ``cfg`` afresh on every call, so changing loss weights between stages takes effect.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.stage = 0
        self.results: list[dict[str, Any]] = []

    def train(self, resume_from: str | None = None, init_from: str | None = None) -> dict[str, Any]:
        """Train one stage; ``resume_from`` continues a run, ``init_from`` loads weights only."""
        from meaning_transform.assemble import epochs_done
        from meaning_transform.training import run

        stage = self.stage + 1
        cfg = apply_seed_aliases(self.cfg.copy())
        with open_dict(cfg):
            cfg.ckpt_path = resume_from
            cfg.init_from = init_from
            cfg.stage = stage
            if cfg.paths.get("output_dir"):  # a fixed folder: one subfolder per stage
                cfg.paths.output_dir = f"{cfg.paths.output_dir}/stage_{stage}"
            if resume_from is not None:  # max_epochs counts this stage's epochs, not the total
                cfg.trainer.max_epochs = epochs_done(resume_from) + int(cfg.trainer.max_epochs)
        result = run(cfg)
        self.stage = stage
        self.results.append(result)
        return result


#: the seed document's names
Config = load_config
Trainer = MeaningTrainer
