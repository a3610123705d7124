"""What a candidate model would make of a database's agent states, measured on a sample.

``choose_model`` keeps the candidate with the smaller whole file: its embedded bytes plus its
states coded. Coding every state with every candidate would double the work, so the first
chunk of states (up to ``SAMPLE`` in coding order) is really coded and the size scaled to all
of them; the other tables cost the same whatever the model.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

from meaning_transform.codec.source import count_states, layout_of
from meaning_transform.codec.states import coding_rows, encode_states, read_known

SAMPLE = 1 << 15


def total_bytes(con: sqlite3.Connection, coding: Any) -> float:
    """Estimated bytes of the model (when embedded) and of every state coded with it."""
    layout = layout_of(con, "database", coding.schema)
    total = count_states(con)
    known = read_known(con)
    with closing(coding_rows(con, layout, "none", SAMPLE)) as rows:
        sample = next(rows, None)
    model = len(coding.blob())
    if sample is None:
        return float(model)
    chunk, _ = encode_states(coding.grid, coding.coder(con), layout, "none", sample, known)
    n = len(sample["agent_id"])
    return model + len(chunk.payload()) * total / n
