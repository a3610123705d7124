"""Classical baselines: hand-computed cross-entropy, real ANS coding, drift 0 at k = 1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meaning_transform.baselines import (
    Table,
    ans_code,
    ans_decode,
    classical_baselines,
    first_of_agent,
)
from meaning_transform.data import SQLiteDataModule, SyntheticDataModule
from meaning_transform.schema import FeatureSchema
from meaning_transform.schema.table import fit


def test_hand_computed_cross_entropy_of_both_codes():
    schema = FeatureSchema.from_config({"features": {"flag": {"kind": "binary"}}})
    schema = fit(schema, {"flag": np.array([0, 1])})
    train = torch.tensor([[0.0], [0.0], [0.0], [1.0]])  # agents 0, 0, 1, 1
    evaluated = torch.tensor([[0.0], [1.0]])  # one agent: 0 then 1
    b = classical_baselines(schema, train, [0, 0, 1, 1], evaluated, [5, 5], ks=(1,))
    # quantizer table: counts 3, 1 and the escape, each + 1/2: 3.5, 1.5, 0.5 of 5.5
    quantizer = -(math.log2(3.5 / 5.5) + math.log2(1.5 / 5.5)) / 2
    assert b["quantizer"][0]["bits_per_state"] == pytest.approx(quantizer, rel=1e-12)
    # delta: training xors 0 (agent 0) and 1 (agent 1): 1.5, 1.5, 0.5 of 3.5;
    # the evaluated agent's first state under the quantizer table, then xor 1
    delta = -(math.log2(3.5 / 5.5) + math.log2(1.5 / 3.5)) / 2
    assert b["delta"][0]["bits_per_state"] == pytest.approx(delta, rel=1e-12)
    assert b["num_states"] == 2 and b["quantizer"][0]["drift"] == 0.0


def test_escapes_cost_their_payload_and_round_trip():
    table = Table.fit(np.array([0, 1, 1, 2]))  # range 0..2: 1.5, 2.5, 1.5 and escape 0.5 of 6
    np.testing.assert_allclose(table.probs, np.array([1.5, 2.5, 1.5, 0.5]) / 6)
    # 7 is 5 past the range: escape + side bit + log2(31) length bits + 2 bits below the leading one
    assert table.bits(np.array([7]))[0] == pytest.approx(
        -math.log2(0.5 / 6) + 1 + math.log2(31) + 2
    )
    # -3 is 3 below: + 1 + log2(31) + 1
    assert table.bits(np.array([-3]))[0] == pytest.approx(
        -math.log2(0.5 / 6) + 1 + math.log2(31) + 1
    )
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.integers(0, 3, 500), [7, -3, 2**20 + 5, -(2**29)]])
    other = Table.fit(np.array([4, 5]))
    words = ans_code([(table, values), (other, values[::-1].copy())])
    first, second = ans_decode(words, [table, other], [len(values), len(values)])
    np.testing.assert_array_equal(first, values)
    np.testing.assert_array_equal(second, values[::-1])


def test_rows_must_be_grouped_by_agent():
    np.testing.assert_array_equal(first_of_agent(np.array([3, 3, 1, 1, 1])), [1, 0, 1, 0, 0])
    with pytest.raises(ValueError, match="sort states by"):
        first_of_agent(np.array([3, 1, 3]))


@pytest.fixture(scope="module")
def synthetic():
    import yaml

    from meaning_transform.config import CONF_DIR

    schema = yaml.safe_load((CONF_DIR / "schema" / "agentfarm.yaml").read_text())
    # 40,000 states, a third held out: enough states that ANS's fixed costs are < 1%
    dm = SyntheticDataModule(schema, num_states=40_000, test_fraction=0.3)
    dm.setup()
    return dm


def check_baselines(dm, delta_beats_quantizer: bool = True) -> dict:
    b = classical_baselines(dm.schema, dm.train_x, dm.train_agents, dm.test_x, dm.test_agents)
    assert b["num_states"] == len(dm.test_x)
    assert [e["k"] for e in b["quantizer"]] == [1, 2, 4, 8, 16]
    assert b["quantizer"][0]["drift"] == 0.0 and b["delta"][0]["drift"] == 0.0
    for q, d in zip(b["quantizer"], b["delta"], strict=True):
        assert q["drift"] == d["drift"]  # both code the same grid states losslessly
        for e in (q, d):
            assert sum(e["bits_by_feature"].values()) == pytest.approx(e["bits_per_state"])
    for e in (b["quantizer"][0], b["delta"][0]):
        assert e["coded_bits_per_state"] == pytest.approx(e["bits_per_state"], rel=0.01)
    if delta_beats_quantizer:
        assert b["delta"][0]["bits_per_state"] < b["quantizer"][0]["bits_per_state"]
    bits = [e["bits_per_state"] for e in b["quantizer"]]
    assert bits == sorted(bits, reverse=True)  # coarser grid, fewer bits
    return b


def test_synthetic_baselines(synthetic):
    b = check_baselines(synthetic)
    assert b["delta"][0]["bits_per_state"] < 0.3 * b["quantizer"][0]["bits_per_state"]


def test_real_db_baselines(real_db, agentfarm_cfg):
    dm = SQLiteDataModule(agentfarm_cfg, path=real_db)
    dm.setup()
    b = check_baselines(dm)
    # agents never move in run 1: the delta code pays almost nothing for positions
    assert b["delta"][0]["bits_by_feature"]["position_x"] < 0.1
