"""Unit tests of the vectorized synthetic agent-state generator."""

from __future__ import annotations

import numpy as np
import pytest

from meaning_transform.data.synthetic import _Segments, generate_synthetic

COLUMNS = {
    "agent_id",
    "step",
    "position_x",
    "position_y",
    "position_z",
    "resource_level",
    "starvation_counter",
    "current_health",
    "starting_health",
    "is_defending",
    "total_reward",
    "age",
    "agent_type",
}


@pytest.fixture(scope="module")
def table() -> dict[str, np.ndarray]:
    return generate_synthetic(20_000, seed=3, num_agents=60)


def per_agent(table: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Row indices of each agent (rows are agent-major)."""
    ids = table["agent_id"]
    return np.split(np.arange(len(ids)), np.flatnonzero(ids[1:] != ids[:-1]) + 1)


def test_exact_rows_and_columns(table):
    assert set(table) == COLUMNS
    assert all(len(col) == 20_000 for col in table.values())
    assert table["step"].dtype == np.int64
    assert len(np.unique(table["agent_id"])) == 60


@pytest.mark.parametrize("n", [1, 2, 7])
def test_tiny_tables(n):
    assert len(generate_synthetic(n)["step"]) == n


def test_same_seed_same_arrays_other_seed_differs():
    a, b, c = generate_synthetic(3000, 5), generate_synthetic(3000, 5), generate_synthetic(3000, 6)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["resource_level"], c["resource_level"])


@pytest.mark.parametrize("n", [0, -5])
def test_num_states_must_be_positive(n):
    with pytest.raises(ValueError, match=f"num_states must be > 0, got {n}"):
        generate_synthetic(n)


def test_num_agents_cannot_exceed_states():
    with pytest.raises(ValueError, match="num_agents must be in 1..num_states=5"):
        generate_synthetic(5, num_agents=6)


def test_consecutive_steps_from_birth(table):
    for rows in per_agent(table):
        steps, age = table["step"][rows], table["age"][rows]
        np.testing.assert_array_equal(np.diff(steps), 1)
        np.testing.assert_array_equal(age, steps - steps[0])
    births = [table["step"][rows[0]] for rows in per_agent(table)]
    assert min(births) == 0 and len(set(births)) > 10  # some start at 0, others are born later


def test_ranges_and_constant_columns(table):
    for axis in ("position_x", "position_y"):
        assert table[axis].min() >= 0 and table[axis].max() <= 49
        np.testing.assert_array_equal(table[axis], np.rint(table[axis]))
    assert np.isnan(table["position_z"]).all()
    assert (table["starting_health"] == 100).all()
    assert table["resource_level"].min() == 0 and not np.signbit(table["resource_level"]).any()
    assert table["current_health"].min() >= 0 and table["current_health"].max() <= 100
    assert set(np.unique(table["is_defending"])) == {0.0, 1.0}


def test_starvation_counts_consecutive_empty_steps(table):
    for rows in per_agent(table):
        empty = table["resource_level"][rows] == 0
        counter = table["starvation_counter"][rows]
        expected = np.zeros(len(rows))
        for i in range(len(rows)):
            expected[i] = (expected[i - 1] + 1 if i else 1) if empty[i] else 0
        np.testing.assert_array_equal(counter, expected)
    assert (table["starvation_counter"] > 0).mean() > 0.01


def test_health_falls_while_starving(table):
    change = np.diff(table["current_health"])
    same_agent = np.diff(table["agent_id"]) == 0
    starving = table["starvation_counter"][1:] > 0
    assert change[same_agent & starving].mean() < 0 < change[same_agent & ~starving].mean() + 1


def test_defending_comes_in_episodes(table):
    d = table["is_defending"]
    switches = np.count_nonzero(np.diff(d) != 0)
    assert 5 < len(d) / switches < 12  # real runs: a switch every ~5.5 states; independent: 2


def test_moves_are_one_cell_along_one_axis_at_the_type_rate():
    t = generate_synthetic(60_000, seed=1, agent_types=("a", "b"))
    assert set(np.unique(t["agent_type"])) == {"a", "b"}
    same_agent = np.diff(t["agent_id"]) == 0
    dx = np.abs(np.diff(t["position_x"]))[same_agent]
    dy = np.abs(np.diff(t["position_y"]))[same_agent]
    assert set(np.unique(dx + dy)) == {0.0, 1.0}  # real AgentFarm moves: one cell, 4 neighbours
    kind = t["agent_type"][1:][same_agent]
    moved = dx + dy > 0
    # profile move probabilities 0.29 and 0.33 (real run 3: 29-34% per type)
    assert moved[kind == "a"].mean() == pytest.approx(0.29, abs=0.02)
    assert moved[kind == "b"].mean() == pytest.approx(0.33, abs=0.02)


def test_age_and_resources_move_like_real_runs(table):
    same_agent = np.diff(table["agent_id"]) == 0
    np.testing.assert_array_equal(np.diff(table["age"])[same_agent], 1.0)
    change = np.round(np.diff(table["resource_level"])[same_agent], 2)
    # mostly the 0.15 consumption, sometimes +1.85 (a gather of 2), clipped at 0 when empty
    assert np.mean(change == -0.15) > 0.6 and np.mean(change == 1.85) > 0.03


def test_total_reward_accumulates(table):
    for rows in per_agent(table)[:5]:
        reward = np.diff(table["total_reward"][rows])
        assert np.abs(reward).max() < 2.5  # per-step increments, not independent draws
        assert np.mean(np.round(reward, 2) == 0.1) > 0.5  # real runs: +0.1 in most steps


def test_segmented_scans_by_hand():
    seg = _Segments(np.array([2, 3]))
    np.testing.assert_array_equal(seg.agent, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(seg.offset, [0, 1, 0, 1, 2])
    np.testing.assert_array_equal(seg.cumsum(np.array([1.0, 2, 3, 4, 5])), [1, 3, 3, 7, 12])
    reflected = seg.reflected_at_zero(np.array([0.0, 1.0]), np.array([-1.0, 2, -3, 1, 1]))
    np.testing.assert_allclose(reflected, [0, 2, 0, 1, 2])
    flags = np.array([True, True, False, True, True])
    np.testing.assert_array_equal(seg.run_length(flags), [1, 2, 0, 1, 2])
    np.testing.assert_array_equal(
        seg.run_length(np.array([False, True, True, True, False])), [0, 1, 1, 2, 0]
    )
