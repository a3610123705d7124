"""Config nodes as plain Python containers (what checkpoints and JSON can hold)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def to_plain(cfg: Any) -> Any:
    """An OmegaConf node -> plain dicts/lists (resolved); any other mapping -> a dict copy."""
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    if cfg is None or not hasattr(cfg, "items"):
        return cfg
    return dict(cfg)
