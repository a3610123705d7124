"""The adaptive context coder (codec/context_coder.py) and its row contexts
(codec/state_context.py): exact round trips on hand-made chunks, costs that can be worked out,
and foreign bytes refused."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import numpy as np
import pytest

from meaning_transform.codec import context_coder as cc
from meaning_transform.codec.state_context import ACTIONS, PREVIOUS_ACTIONS, EventContext, combined


def _chunk(lengths: list[int], features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symbols of agents with the given numbers of states (random walks) and their flags."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in lengths:
        start = rng.integers(-50, 200, features)
        steps = rng.integers(-2, 3, (n, features)) * (rng.random((n, features)) < 0.3)
        rows.append(start + np.cumsum(steps, axis=0) - steps[0])
    symbols = np.concatenate(rows) if rows else np.zeros((0, features), np.int64)
    flag = np.concatenate([np.arange(n) > 0 for n in lengths]) if lengths else np.zeros(0, bool)
    return symbols.astype(np.int64), flag


def _round_trip(symbols: np.ndarray, flag: np.ndarray, context=None, contexts: int = 1):
    context = np.zeros(len(flag), np.int64) if context is None else context
    lowest = tuple(symbols.min(axis=0).tolist()) if len(symbols) else (0,) * symbols.shape[1]
    layout = cc.Layout((False,) * (symbols.shape[1] - 1) + (True,), contexts, lowest)
    words, bits = cc.encode(symbols, flag, context, layout)
    assert np.array_equal(cc.decode(words, flag, context, layout), symbols)
    return words, bits


@pytest.mark.parametrize("lengths", [[30, 1, 7, 1, 12], [1], [40], [1, 1, 1], [25] * 9], ids=str)
def test_round_trip_is_exact(lengths) -> None:
    symbols, flag = _chunk(lengths, 3)
    symbols[:, 2] = symbols[:, 2] % 2  # a binary feature
    context = np.arange(len(flag)) % 4
    words, bits = _round_trip(symbols, flag, context, 4)
    assert abs(32 * len(words) - bits) < 64  # the counts' price is what the coder spends


def test_escapes_round_trip() -> None:
    symbols, flag = _chunk([20, 20], 2)
    symbols[5, 0] += 1000  # a jump far past the differences' bins
    symbols[25, 1] -= 70000
    symbols[20, 0] += cc.FIRST + 5  # a first state past the first-state bins
    _round_trip(symbols, flag)


def test_first_states_from_a_guess() -> None:
    """Bases for agents' first states: a right guess makes them cheap, a wild one escapes."""
    symbols, flag = _chunk([10] * 30, 2, seed=3)
    layout = cc.Layout((False, False), 1, tuple(symbols.min(axis=0).tolist()))
    context = np.zeros(len(flag), np.int64)
    bits = {}
    for name, first in {
        "lowest": None,
        "right": symbols - cc.FIRST // 2,
        "wild": symbols + 10**6 * (np.arange(len(flag)) % 2)[:, None],
    }.items():
        words, bits[name] = cc.encode(symbols, flag, context, layout, first)
        assert np.array_equal(cc.decode(words, flag, context, layout, first), symbols)
    assert bits["right"] < bits["lowest"] - 30 * 2 * 3  # >= 3 bits saved per first state
    with pytest.raises(ValueError, match="first-state bases"):
        cc.encode(symbols, flag, context, layout, symbols[:, :1])


def test_empty_chunk() -> None:
    words, bits = _round_trip(np.zeros((0, 2), np.int64), np.zeros(0, bool))
    assert bits == 0 and len(cc.decode(words, np.zeros(0, bool), np.zeros(0, np.int64),
                                       cc.Layout((False, False), 1, (0, 0)))) == 0  # fmt: skip


def test_a_constant_column_costs_almost_nothing() -> None:
    """40 agents x 100 states of one constant feature: after the first waves the counts say
    'no change' with probability near 1: well under 0.05 bits per state in all."""
    symbols = np.full((4000, 1), 7, np.int64)
    flag = np.tile(np.arange(100) > 0, 40)
    _, bits = _round_trip(symbols, flag)
    assert bits / 4000 < 0.05
    # a column that changes at random costs about its entropy: 1 bit per later state
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.integers(0, 2, (40, 100)) * (np.arange(100) > 0), axis=1)
    walk = walk.reshape(-1, 1)
    _, bits = _round_trip(walk, flag)
    assert 0.95 < bits / 3960 < 1.15


def test_row_context_pays_when_it_explains_the_changes() -> None:
    rng = np.random.default_rng(2)
    moved = rng.integers(0, 2, 4000)
    flag = np.tile(np.arange(100) > 0, 40)
    symbols = np.cumsum((moved * flag).reshape(40, 100), axis=1).reshape(-1, 1)
    _, alone = _round_trip(symbols, flag)
    _, told = _round_trip(symbols, flag, moved, 2)
    assert told < alone / 5  # the rest: learning which context says what


def test_foreign_bytes_are_refused() -> None:
    symbols, flag = _chunk([30, 30], 2)
    context = np.zeros(len(flag), np.int64)
    layout = cc.Layout((False, False), 1, tuple(symbols.min(axis=0).tolist()))
    words, _ = cc.encode(symbols, flag, context, layout)
    refused = 0
    for bad in (words[: len(words) // 2], np.concatenate([words, words]), words ^ 0x5A5A5A5A):
        try:
            decoded = cc.decode(bad, flag, context, layout)
        except ValueError as e:
            assert "\n" not in str(e)
            refused += 1
        else:
            assert not np.array_equal(decoded, symbols)  # caught by the chunk's CRC
    assert refused >= 2
    with pytest.raises(ValueError, match="row contexts"):
        cc.encode(symbols, flag, context + 1, layout)


def test_event_context_numbers_sets_from_the_table_itself() -> None:
    con = sqlite3.connect(":memory:")
    with closing(con):
        con.execute("CREATE TABLE agent_actions (agent_id TEXT, step_number INT, action_type)")
        con.executemany(
            "INSERT INTO agent_actions VALUES (?, ?, ?)",
            [("a", 0, "move"), ("a", 0, "move"), ("a", 1, "gather"), ("b", 0, "gather"),
             ("b", 1, "gather"), ("b", 1, "move")],
        )  # fmt: skip
        same, before = EventContext(con, ACTIONS), EventContext(con, PREVIOUS_ACTIONS)
    ids = same.of(["a", "a", "a", "b", "b"], [0, 1, 2, 0, 1])
    # sets sorted: (gather,) 1, (gather, move) 2, (move,) 3; none 0
    assert ids.tolist() == [3, 1, 0, 1, 2] and same.size == 5
    assert before.of(["a", "a", "b"], [0, 1, 2]).tolist() == [0, 3, 2]
    both, size = combined([(ids, 5), (ids, 5)], 5)
    assert size == 25 and both.tolist() == [18, 6, 0, 6, 12]


# ---------------------------------------------------------------- in the codec (coder=adaptive)
def _db_with_actions(path):
    """A small simulation.db whose agent_actions say when agents move."""
    from agentfarm_db import write_agentfarm_db

    write_agentfarm_db(path, 600, num_agents=6, nulls={"resource_level": 3})
    with closing(sqlite3.connect(path)) as con:
        con.execute("CREATE TABLE agent_actions (action_id INTEGER PRIMARY KEY, agent_id TEXT, "
                    "step_number INTEGER, action_type TEXT)")  # fmt: skip
        rows = con.execute("SELECT agent_id, step_number FROM agent_states").fetchall()
        con.executemany(
            "INSERT INTO agent_actions (agent_id, step_number, action_type) VALUES (?, ?, ?)",
            [(a, s, ("move", "gather", "defend")[s % 3]) for a, s in rows],
        )
        con.commit()
    return path


def test_compress_without_a_model_reads_the_restored_actions(tmp_path, capsys) -> None:
    from codec_helpers import assert_same_meaning
    from mtc_craft import rewrite

    from meaning_transform.codec.__main__ import main as codec_main
    from meaning_transform.codec.container import Reader

    db = _db_with_actions(tmp_path / "sim.db")
    out, restored = tmp_path / "a.mtc", tmp_path / "a.db"
    assert codec_main(["compress", f"data.path={db}", f"out={out}", "chunk_size=250"]) == 0
    assert "adaptive coder given agent_actions.action_type" in capsys.readouterr().out
    with open(out, "rb") as fh:
        reader = Reader(fh, str(out))
        model = reader.header["model"]
    assert reader.model == b"" and model["source"] == "adaptive"
    assert model["contexts"] == ["agent_actions.action_type"]
    assert model["anchors"] == ["position_x", "position_y"]  # agents' birth places
    assert codec_main(["decompress", f"in={out}", f"out={restored}"]) == 0
    assert assert_same_meaning(db, restored) == 600
    # a header naming a context this version does not read is one line
    bad = rewrite(out, tmp_path / "bad.mtc",
                  header=lambda h: h["model"].update(contexts=["agents.genome_id"]))  # fmt: skip
    assert codec_main(["decompress", f"in={bad}", f"out={tmp_path / 'b.db'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown row context" in err
    bad = rewrite(out, tmp_path / "bad2.mtc",
                  header=lambda h: h["model"].update(anchors=["is_defending"]))  # fmt: skip
    assert codec_main(["decompress", f"in={bad}", f"out={tmp_path / 'b.db'}"]) == 2
    assert "field 'anchors'" in capsys.readouterr().err
    # other actions restored than were coded: the states decode to others, refused
    swapped = rewrite(out, tmp_path / "swap.mtc",
                      header=lambda h: h["model"].update(contexts=["health_incidents.cause"]))  # fmt: skip
    assert codec_main(["decompress", f"in={swapped}", f"out={tmp_path / 's.db'}"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
