"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meaning_transform.schema import FeatureSchema

REPO = Path(__file__).resolve().parents[1]
AGENTFARM_SCHEMA = REPO / "conf" / "schema" / "agentfarm.yaml"
REAL_DB = REPO.parent / "shared" / "data" / "agentfarm_run1.db"


@pytest.fixture
def agentfarm_cfg() -> dict[str, Any]:
    """The AgentFarm schema as the plain dict its YAML file holds."""
    return yaml.safe_load(AGENTFARM_SCHEMA.read_text())


@pytest.fixture
def agentfarm_schema(agentfarm_cfg: dict[str, Any]) -> FeatureSchema:
    """The (unfitted) AgentFarm feature schema."""
    return FeatureSchema.from_config(agentfarm_cfg)


@pytest.fixture
def real_db() -> Path:
    """The real AgentFarm database in shared/data (skips when this clone does not have it)."""
    if not REAL_DB.exists():
        pytest.skip(f"real AgentFarm database not present at {REAL_DB}")
    return REAL_DB
