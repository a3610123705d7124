"""The adaptive coding source: agent_states' features coded by ``context_coder`` with counts
learned while coding (no model in the file, no training), given what the tables restored before
them say (``state_context``).

What it needs from the database is the schema fitted to it (``fitted_schema``: the declared
schema of ``conf/schema``, its vocabularies and normalization read off the states), which the
file's header carries like any other model's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meaning_transform.errors import DataError
from meaning_transform.schema import FeatureSchema
from meaning_transform.schema import table as schema_table


def fitted_schema(path: str | Path) -> FeatureSchema:
    """The project's declared agent-state schema fitted to the database ``path``: optional
    features it cannot fill dropped, vocabularies and normalization read from its valid rows."""
    from meaning_transform.api import load_config
    from meaning_transform.data.sqlite import load_sqlite

    declared = FeatureSchema.from_config(load_config().schema)
    table = load_sqlite(path, declared)
    bad = schema_table.invalid_rows(declared, table)
    empty = {k for k, m in bad.items() if m.all() and declared.feature(k).optional}
    table = {k: v for k, v in table.items() if k not in empty}
    keep = np.ones(len(table["step"]), dtype=bool)
    for name, mask in bad.items():
        if name not in empty:
            keep &= ~mask
    if not keep.any():
        raise DataError(f"{path}: no agent state holds valid values for every feature")
    table = {k: v[keep] for k, v in table.items()}
    return schema_table.fit(declared, table, valid=True)
