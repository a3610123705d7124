"""Seeded, fully vectorized generator of realistic AgentFarm-like agent-state tables.

Rows are agent-major: each agent has a birth step and a lifespan, and its states are consecutive
steps from birth. Per-agent sequential processes are computed for all agents at once with
segmented cumulative sums; processes clipped at a bound (resources at 0, health at 100) use the
Lindley recursion ``W_t = max(0, W_{t-1} + x_t)``, whose closed form
``W_t = S_t - min(0, min_{s<=t} S_s)`` needs only a segmented running minimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meaning_transform.schema import Table

DEFAULT_AGENT_TYPES = ("system", "independent", "control")
STARTING_HEALTH = 100.0
MEAN_LIFESPAN = 100  # states per agent when num_agents is not given (real runs: ~230; shorter
# lives give more agents, so the by-agent validation and test splits are not a handful of agents)


@dataclass(frozen=True)
class Behaviour:
    """How one agent type moves, gathers, defends and is hurt (per step)."""

    share: float  # relative frequency of the type
    move: float  # probability of a one-cell move (up, down, left or right) per step
    gather: float  # probability of gathering GATHER_AMOUNT resources in a step
    defend: float  # fraction of time spent defending
    hit_rate: float  # probability of being hit per step when not defending


# Profiles are assigned to agent types by position, cycling when there are more types. Real
# AgentFarm runs (shared/data): agents of every type move one cell in ~29-34% of steps (run 3;
# nobody moves in run 1), consume 0.15 resources per step and gather ~2 at a time, earn 0.1
# reward per step (+2.2 when gathering), defend ~39% of the time and switch in ~18% of steps.
PROFILES = (
    Behaviour(share=0.48, move=0.29, gather=0.075, defend=0.35, hit_rate=0.04),
    Behaviour(share=0.32, move=0.33, gather=0.070, defend=0.30, hit_rate=0.08),
    Behaviour(share=0.20, move=0.31, gather=0.065, defend=0.55, hit_rate=0.06),
    Behaviour(share=0.15, move=0.33, gather=0.080, defend=0.60, hit_rate=0.02),
    Behaviour(share=0.10, move=0.34, gather=0.060, defend=0.20, hit_rate=0.12),
)
CONSUMPTION = 0.15  # resources used per step
GATHER_AMOUNT = 2.0  # resources gathered in a gathering step


def generate_synthetic(
    num_states: int,
    seed: int = 0,
    num_agents: int | None = None,
    grid_size: int = 50,
    agent_types: tuple[str, ...] = DEFAULT_AGENT_TYPES,
) -> Table:
    """Table of exactly ``num_states`` agent states; same arguments give identical arrays."""
    _check_args(num_states, num_agents, grid_size, agent_types)
    rng = np.random.default_rng(seed)
    n_agents = num_agents or max(1, round(num_states / MEAN_LIFESPAN))
    lifespans = _lifespans(rng, num_states, n_agents)
    horizon = max(2 * MEAN_LIFESPAN, int(lifespans.max()))
    births = _births(rng, lifespans, horizon)
    profiles = [PROFILES[i % len(PROFILES)] for i in range(len(agent_types))]
    share = np.array([p.share for p in profiles])
    agent_kind = rng.choice(len(agent_types), size=n_agents, p=share / share.sum())

    seg = _Segments(lifespans)
    age = seg.offset
    kind = agent_kind[seg.agent]
    param = {
        name: np.array([getattr(p, name) for p in profiles])[kind]
        for name in ("move", "gather", "defend", "hit_rate")
    }

    pos_x, pos_y = _positions(rng, seg, param["move"], grid_size)
    is_defending = _episodes(rng, seg, param["defend"], switch_prob=0.3)
    gathered = GATHER_AMOUNT * (rng.random(num_states) < param["gather"])
    # Rounded to the stored precision before testing for zero, so scan round-off cannot hide it.
    resources = (
        np.round(seg.reflected_at_zero(rng.uniform(0, 10, n_agents), gathered - CONSUMPTION), 2)
        + 0.0
    )
    starving = resources <= 0.0
    starvation = seg.run_length(starving)
    hits = rng.random(num_states) < np.where(is_defending, 0.25, 1.0) * param["hit_rate"]
    damage = 1.0 * starving + hits * rng.uniform(2.0, 10.0, num_states) - 0.5  # 0.5 regen
    health = np.maximum(STARTING_HEALTH - seg.reflected_at_zero(np.zeros(n_agents), damage), 0.0)
    reward = 0.1 + 1.1 * gathered

    return {
        "agent_id": seg.agent.astype(np.int64),
        "step": (births[seg.agent] + age).astype(np.int64),
        "position_x": pos_x,
        "position_y": pos_y,
        "position_z": np.full(num_states, np.nan),
        "resource_level": resources,
        "starvation_counter": starvation.astype(np.float64),
        "current_health": np.round(health, 2),
        "starting_health": np.full(num_states, STARTING_HEALTH),
        "is_defending": is_defending.astype(np.float64),
        "total_reward": np.round(seg.cumsum(reward), 2),
        "age": age.astype(np.float64),
        "agent_type": np.asarray(agent_types, dtype=str)[kind],
    }


def _check_args(
    num_states: int, num_agents: int | None, grid_size: int, agent_types: tuple[str, ...]
) -> None:
    if num_states <= 0:
        raise ValueError(f"num_states must be > 0, got {num_states}")
    if num_agents is not None and not 0 < num_agents <= num_states:
        raise ValueError(f"num_agents must be in 1..num_states={num_states}, got {num_agents}")
    if grid_size < 1:
        raise ValueError(f"grid_size must be >= 1, got {grid_size}")
    if not agent_types:
        raise ValueError("agent_types must name at least one agent type, got none")


def _lifespans(rng: np.random.Generator, num_states: int, n_agents: int) -> np.ndarray:
    """Skewed lifespans (>= 1 each) summing to exactly num_states."""
    weights = rng.exponential(1.0, n_agents)
    return 1 + rng.multinomial(num_states - n_agents, weights / weights.sum())


def _births(rng: np.random.Generator, lifespans: np.ndarray, horizon: int) -> np.ndarray:
    """Birth steps: about a third of the agents start at step 0, the rest are born later."""
    latest = horizon - lifespans
    births = rng.integers(0, latest + 1)
    return np.where(rng.random(len(lifespans)) < 0.3, 0, births)


def _positions(
    rng: np.random.Generator, seg: _Segments, move: np.ndarray, grid_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Whole-cell positions: from a random cell, a move of one cell up, down, left or right
    with probability ``move`` per step, reflected at the grid's edges."""
    top = grid_size - 1
    n = len(seg.agent)
    moved = rng.random(n) < move
    moved[seg.starts] = False
    along_x = rng.random(n) < 0.5
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0) * moved
    out = []
    for steps in (sign * along_x, sign * ~along_x):
        start = rng.integers(0, top + 1, len(seg.lifespans)).astype(np.float64)
        walk = seg.cumsum(steps) + start[seg.agent]
        if top == 0:
            out.append(np.zeros_like(walk))
            continue
        folded = np.mod(walk, 2 * top)
        out.append(np.where(folded > top, 2 * top - folded, folded))
    return out[0], out[1]


def _episodes(
    rng: np.random.Generator, seg: _Segments, propensity: np.ndarray, switch_prob: float
) -> np.ndarray:
    """Persistent 0/1 runs: at random switch points (and at birth) a new state is drawn."""
    n = len(seg.agent)
    draws = rng.random(n) < propensity
    switch = rng.random(n) < switch_prob
    switch[seg.starts] = True
    idx = np.arange(n)
    last_switch = np.maximum.accumulate(np.where(switch, idx, 0))
    return draws[last_switch]


class _Segments:
    """Row layout of agents with consecutive states, and segmented scans over it."""

    def __init__(self, lifespans: np.ndarray) -> None:
        self.lifespans = lifespans
        self.starts = np.concatenate(([0], np.cumsum(lifespans)[:-1]))
        self.agent = np.repeat(np.arange(len(lifespans)), lifespans)
        self.offset = np.arange(int(lifespans.sum())) - self.starts[self.agent]

    def cumsum(self, x: np.ndarray) -> np.ndarray:
        """Cumulative sum restarting at each agent's first state."""
        total = np.cumsum(x)
        before = total[self.starts] - x[self.starts]
        return total - before[self.agent]

    def reflected_at_zero(self, start: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``W_t = max(0, W_{t-1} + x_t)`` per agent, ``W_{-1} = start`` (Lindley recursion)."""
        s = self.cumsum(x) + start[self.agent]
        # Shift each later agent below all earlier ones so one global running min is segmented.
        span = float(np.abs(s).max()) * 2 + 1
        shift = self.agent * span
        running_min = np.minimum.accumulate(s - shift) + shift
        return s - np.minimum(running_min, 0.0)

    def run_length(self, flag: np.ndarray) -> np.ndarray:
        """Length of the current run of True ending at each row, restarting per agent."""
        idx = np.arange(len(flag))
        marker = np.where(flag, -1, idx)
        marker[self.starts] = np.where(flag[self.starts], self.starts - 1, self.starts)
        return idx - np.maximum.accumulate(marker)
