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
    assert len(d) / switches > 5  # mean run length well above the 2 of independent draws


def test_agent_types_behave_differently():
    t = generate_synthetic(30_000, seed=1, agent_types=("a", "b"))
    assert set(np.unique(t["agent_type"])) == {"a", "b"}
    same_agent = np.diff(t["agent_id"]) == 0
    step = np.abs(np.diff(t["position_x"]))[same_agent]
    kind = t["agent_type"][1:][same_agent]
    assert step[kind == "b"].mean() > 1.5 * step[kind == "a"].mean()  # speeds 1.2 vs 0.4


def test_total_reward_accumulates(table):
    for rows in per_agent(table)[:5]:
        reward = np.diff(table["total_reward"][rows])
        assert np.abs(reward).max() < 2  # per-step increments, not independent draws


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
