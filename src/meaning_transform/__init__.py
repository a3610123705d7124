"""meaning-transform: learn compact, meaning-preserving codes of agent states.

The Python API (imported lazily, so light tools such as the sweep report start fast)::

    from meaning_transform import load_config, MeaningTrainer
"""

from __future__ import annotations

from meaning_transform.lazy import lazy_getattr

_EXPORTS = {
    "load_config": "meaning_transform.api",
    "MeaningTrainer": "meaning_transform.api",
    "Trainer": "meaning_transform.api",
    "Config": "meaning_transform.api",
    "run": "meaning_transform.training",
    "MeaningModule": "meaning_transform.module",
    "FeatureSchema": "meaning_transform.schema",
    "evaluate_checkpoint": "meaning_transform.evaluate",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
