"""The Python API: compose the config without the CLI, train in stages, get results as a dict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from meaning_transform.config import CONF_DIR
from meaning_transform.training import run


def load_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The composed ``conf/train.yaml`` (plus Hydra-style ``overrides``), in struct mode.

    Attribute access and assignment work (``cfg.model.latent_dim = 32``); setting a key that does
    not exist raises. Values are validated when training starts.
    """
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="api"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    OmegaConf.set_struct(cfg, True)
    return cfg


class MeaningTrainer:
    """Drives training from Python; each ``train()`` call is one stage with its own run dir.

    Run dirs: ``outputs/<experiment_name>/<timestamp>/`` per stage, or, when
    ``cfg.paths.output_dir`` is set, ``<output_dir>/stage_<n>/``.

    Not Lightning's ``Trainer``: this wraps the whole run (data, model, callbacks, outputs) and
    reads ``cfg`` afresh on every call, so changing loss weights between stages takes effect.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.stage = 0
        self.results: list[dict[str, Any]] = []

    def train(self, resume_from: str | None = None, init_from: str | None = None) -> dict[str, Any]:
        """Train one stage; ``resume_from`` continues a run, ``init_from`` loads weights only."""
        self.stage += 1
        cfg = self.cfg.copy()
        with open_dict(cfg):
            cfg.ckpt_path = resume_from
            cfg.init_from = init_from
            cfg.stage = self.stage
            if cfg.paths.get("output_dir"):  # a fixed folder: one subfolder per stage
                cfg.paths.output_dir = f"{cfg.paths.output_dir}/stage_{self.stage}"
        result = run(cfg)
        self.results.append(result)
        return result


#: the seed document's name
Trainer = MeaningTrainer
