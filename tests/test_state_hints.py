"""States guessed from agent_actions' details (codec/state_hints.py) and the adaptive coder's
use of the guesses (``context_coder``'s ``hint``): which fields become hints, what a right
guess saves, and headers naming hints refused when they are not hints."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

import numpy as np
import pytest

from meaning_transform.codec import context_coder as cc
from meaning_transform.codec.bounded import CodecFileError
from meaning_transform.codec.state_hints import NO_HINT, Hint, HintValues, find_hints, hints_of
from meaning_transform.codec.state_hints import leaves as json_leaves


def test_leaves_are_the_finite_numbers_with_their_paths() -> None:
    obj = json.loads(
        '{"a": 1, "b": [2.5, {"c": 3}], "d": true, "e": "x", "f": null, "g": {"h": [[4]]}}'
    )
    assert list(json_leaves(obj)) == [
        (("a",), 1.0), (("b", 0), 2.5), (("b", 1, "c"), 3.0), (("g", "h", 0, 0), 4.0),
    ]  # fmt: skip
    deep = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}  # past MAX_PATH keys
    assert list(json_leaves(deep)) == []


def test_coder_codes_around_a_guess() -> None:
    """A right guess of every later state makes a random walk almost free; no guess anywhere
    codes exactly as without hints; wrong guesses still decode exactly."""
    rng = np.random.default_rng(4)
    flag = np.tile(np.arange(100) > 0, 40)
    symbols = np.cumsum(rng.integers(-3, 4, (40, 100)), axis=1).reshape(-1, 1)
    layout = cc.Layout((False,), 1, (int(symbols.min()),))
    context = np.zeros(len(flag), np.int64)
    words, alone = cc.encode(symbols, flag, context, layout)
    none = np.full_like(symbols, NO_HINT)
    assert np.array_equal(cc.encode(symbols, flag, context, layout, None, none)[0], words)
    wrong = symbols + 100 * (np.arange(len(flag)) % 7 == 0)[:, None]  # every 7th far off
    bits = {}
    for name, hint in {"right": symbols, "mostly right": wrong}.items():
        coded, bits[name] = cc.encode(symbols, flag, context, layout, None, hint)
        assert np.array_equal(cc.decode(coded, flag, context, layout, None, hint), symbols)
    assert alone / 4000 > 2.5  # seven equally likely steps: log2(7) = 2.8 bits
    assert bits["right"] / 4000 < 0.1
    assert bits["right"] < bits["mostly right"] < alone
    with pytest.raises(ValueError, match="hints must be"):
        cc.encode(symbols, flag, context, layout, None, symbols[:10])


def _db_with_details(path, extra=None, incidents=False):
    """A small simulation.db whose moves log the agent's position (and ``extra`` fields), and
    (``incidents``) whose health incidents say the agent's health."""
    from agentfarm_db import write_agentfarm_db

    write_agentfarm_db(path, 600, num_agents=6)
    with closing(sqlite3.connect(path)) as con:
        con.execute("CREATE TABLE agent_actions (action_id INTEGER PRIMARY KEY, agent_id TEXT, "
                    "step_number INTEGER, action_type TEXT, details TEXT)")  # fmt: skip
        rows = con.execute(
            "SELECT agent_id, step_number, position_x, position_y FROM agent_states"
        ).fetchall()
        actions = []
        for i, (a, s, x, y) in enumerate(rows):
            fields = {"current_position": [x, y], "noise": i % 17, "cost": 0}
            fields.update(extra(x, y) if extra else {})
            kind = ("move", "defend")[i % 2]
            actions.append((a, s, kind, json.dumps(fields) if kind == "move" else "{}"))
        con.executemany(
            "INSERT INTO agent_actions (agent_id, step_number, action_type, details) "
            "VALUES (?, ?, ?, ?)",
            actions,
        )
        if incidents:  # every third state: a hit that leaves the agent at its health
            con.execute("CREATE TABLE health_incidents (agent_id TEXT, step_number INTEGER, "
                        "health_after REAL, cause TEXT)")  # fmt: skip
            con.execute("INSERT INTO health_incidents SELECT agent_id, step_number, "
                        "current_health, 'hit' FROM agent_states WHERE rowid % 3 = 0")  # fmt: skip
        con.commit()
    return path


def test_the_fields_that_say_the_state_are_found(tmp_path) -> None:
    from meaning_transform.codec.adaptive import fitted_schema
    from meaning_transform.grid import MeaningGrid

    db = _db_with_details(tmp_path / "sim.db", lambda x, y: {"new_position": [x, y]}, True)
    schema = fitted_schema(db)
    grid = MeaningGrid(schema, 1)
    names = [f.name for f in schema.features]
    with closing(sqlite3.connect(db)) as con:
        hints = find_hints(con, grid, [f.name for f in schema.of_kind("continuous")])
        # new_position repeats current_position: it guesses no state the first one does not
        assert {h.entry()[0]: h.entry()[1:] for h in hints} == {
            "position_x": ["agent_actions", "move", "details", "current_position", 0],
            "position_y": ["agent_actions", "move", "details", "current_position", 1],
            "current_health": ["health_incidents", "hit", "health_after"],
        }
        guesses = HintValues(con, hints, grid, names)
        keys = con.execute("SELECT agent_id, step_number, position_x FROM agent_states").fetchall()
    got = guesses.of([k[0] for k in keys], [k[1] for k in keys])
    x = names.index("position_x")
    moved = got[:, x] != NO_HINT
    assert moved.sum() == 300  # every other row is a move
    cells = grid.cells("position_x", np.array([k[2] for k in keys]))
    assert np.array_equal(got[moved, x], cells[moved])
    assert (got[:, names.index("current_health")] != NO_HINT).sum() == 200


def test_headers_naming_other_than_hints_are_refused() -> None:
    continuous = {"position_x", "resource_level"}
    good = [
        ["position_x", "agent_actions", "move", "details", "current_position", 0],
        ["resource_level", "health_incidents", "combat", "health_after"],
    ]
    assert hints_of(good, continuous, "h") == (
        Hint("position_x", "agent_actions", "move", ("details", "current_position", 0)),
        Hint("resource_level", "health_incidents", "combat", ("health_after",)),
    )
    act = ["position_x", "agent_actions", "move"]
    for bad in (
        "position_x",
        [["is_defending", "agent_actions", "defend", "x"]],  # not a continuous feature
        [["position_x", "agents", "move", "x"]],  # not a table hints are read from
        [act],  # no path
        [[*act, 0]],  # a path starts with a column
        [[*act, "d", "a", "b", "c", "d", "e"]],  # too deep
        [[*act, "d", True]],
        [[*act, "d", -1]],
        [[*act, "k" * 65]],
        [["position_x", "agent_actions", 3, "k"]],
        [good[0]] * 33,
    ):
        with pytest.raises(CodecFileError, match="field 'hints'") as e:
            hints_of(bad, continuous, "h")
        assert "\n" not in str(e.value)


def test_compress_reads_the_states_from_the_restored_details(tmp_path, capsys) -> None:
    from codec_helpers import assert_same_meaning
    from mtc_craft import rewrite

    from meaning_transform.codec.__main__ import main as codec_main
    from meaning_transform.codec.container import Reader

    db = _db_with_details(tmp_path / "sim.db")
    out, restored = tmp_path / "a.mtc", tmp_path / "a.db"
    assert codec_main(["compress", f"data.path={db}", f"out={out}"]) == 0
    assert "2 values of agent_actions" in capsys.readouterr().out
    with open(out, "rb") as fh:
        hints = Reader(fh, str(out)).header["model"]["hints"]
    assert sorted(h[0] for h in hints) == ["position_x", "position_y"]
    assert codec_main(["decompress", f"in={out}", f"out={restored}"]) == 0
    assert assert_same_meaning(db, restored) == 600
    # a header naming other fields: the states decode to others, refused in one line
    swapped = rewrite(out, tmp_path / "swap.mtc",
                      header=lambda h: h["model"].update(
                          hints=[["position_x", "agent_actions", "move", "details", "noise"]]))  # fmt: skip
    assert codec_main(["decompress", f"in={swapped}", f"out={tmp_path / 's.db'}"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "s.db").exists()


def test_the_first_hint_and_then_the_lowest_cell_wins(tmp_path) -> None:
    """Whatever order the rows come in: a hint earlier in the header beats a later one, and
    among one hint's rows at an (agent, step) the lowest cell is taken."""
    from types import SimpleNamespace

    grid = SimpleNamespace(steps={"x": 1.0}, cells=lambda name, v: np.rint(v).astype(np.int64))
    hints = (
        Hint("x", "agent_actions", "move", ("details", "at")),
        Hint("x", "health_incidents", "hit", ("after",)),
    )
    for flip in (False, True):
        con = sqlite3.connect(":memory:")
        con.execute("CREATE TABLE agent_actions (agent_id, step_number, action_type, details)")
        con.execute("CREATE TABLE health_incidents (agent_id, step_number, cause, after)")
        moves = [("a", 1, "move", '{"at": 7.2}'), ("a", 1, "move", '{"at": 5.0}'),
                 ("b", 1, "move", '{"at": "far"}')]  # fmt: skip
        hits = [("a", 1, "hit", 1.0), ("b", 1, "hit", 3.0), ("c", 2, "hit", 9.0)]
        con.executemany(
            "INSERT INTO agent_actions VALUES (?, ?, ?, ?)", moves[:: -1 if flip else 1]
        )
        con.executemany(
            "INSERT INTO health_incidents VALUES (?, ?, ?, ?)", hits[:: -1 if flip else 1]
        )
        got = HintValues(con, hints, grid, ["y", "x"]).of(
            ["a", "b", "c", "d", "a"], [1, 1, 2, 1, "1"]
        )
        assert got[:, 1].tolist() == [5, 3, 9, NO_HINT, NO_HINT]
        assert (got[:, 0] == NO_HINT).all()


def test_a_column_with_a_declared_tolerance_guesses_nothing(tmp_path, capsys) -> None:
    """Its restored values are not the coded ones: a guess from it would decode other states."""
    from codec_helpers import assert_same_meaning

    from meaning_transform.codec.__main__ import main as codec_main
    from meaning_transform.codec.container import Reader

    db = _db_with_details(tmp_path / "sim.db", incidents=True)
    for loose, tables in (
        (False, ["agent_actions", "health_incidents"]),
        (True, ["agent_actions"]),
    ):
        out, restored = tmp_path / f"{loose}.mtc", tmp_path / f"{loose}.db"
        extra = ["+tolerances.health_incidents.health_after=0.5"] if loose else []
        assert codec_main(["compress", f"data.path={db}", f"out={out}", *extra]) == 0
        with open(out, "rb") as fh:
            hints = Reader(fh, str(out)).header["model"]["hints"]
        assert sorted({h[1] for h in hints}) == tables
        assert codec_main(["decompress", f"in={out}", f"out={restored}"]) == 0
        assert assert_same_meaning(db, restored) == 600
    capsys.readouterr()
