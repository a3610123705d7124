"""Unit tests of the feature schema: layout, normalization, predicates, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from meaning_transform.config import CONF_DIR
from meaning_transform.schema import FeatureSchema, SchemaError
from meaning_transform.schema.layout import SchemaLayout
from meaning_transform.schema.table import decode, encode, fit

SMALL = {
    "features": {
        "x": {"kind": "continuous", "unit": "cells", "tolerance": 0.5, "group": "spatial"},
        "hp": {"kind": "continuous", "unit": "hp", "tolerance": 2.0, "group": "status"},
        "z": {"kind": "continuous", "tolerance": 1.0, "group": "spatial", "optional": True},
        "defending": {"kind": "binary", "group": "status"},
        "role": {"kind": "categorical", "group": "role"},
    },
    "predicates": {
        "alive": {"feature": "hp", "op": ">", "value": 0, "group": "status"},
        "low": {"feature": "hp", "op": "<", "value": 30, "group": "status"},
    },
}


def table() -> dict[str, np.ndarray]:
    return {
        "x": np.array([0.0, 2.0, 4.0, 6.0]),
        "hp": np.array([100.0, 50.0, 20.0, 0.0]),
        "z": np.array([np.nan] * 4),
        "defending": np.array([0, 1, 1, 0]),
        "role": np.array(["b", "a", "b", "c"], dtype=object),
    }


def fitted() -> FeatureSchema:
    return fit(FeatureSchema.from_config(SMALL), table())


def test_layout_is_derived_from_declaration():
    s = fitted()
    assert s.names == ["x", "hp", "defending", "role"]  # z dropped: all NULL
    assert s.columns == {"x": 0, "hp": 1, "defending": 2, "role": 3}
    assert s.feature("role").categories == ("a", "b", "c")
    assert s.head_slices == {
        "x": slice(0, 1),
        "hp": slice(1, 2),
        "defending": slice(2, 3),
        "role": slice(3, 6),
    }
    assert s.head_dim == 6 and s.input_dim == 6


def test_normalization_is_standardization_fitted_on_given_table():
    s = fitted()
    assert s.normalizers["x"].mean == pytest.approx(3.0)
    assert s.normalizers["x"].std == pytest.approx(np.sqrt(5.0))  # population std of 0,2,4,6
    x = encode(s, table())
    assert x[:, 0].tolist() == pytest.approx(
        [-3 / np.sqrt(5), -1 / np.sqrt(5), 1 / np.sqrt(5), 3 / np.sqrt(5)]
    )
    assert x[:, 3].tolist() == [1.0, 0.0, 1.0, 2.0]


def test_encode_decode_round_trip():
    s = fitted()
    t = table()
    back = decode(s, encode(s, t))
    np.testing.assert_allclose(back["x"], t["x"], atol=1e-5)
    np.testing.assert_allclose(back["hp"], t["hp"], atol=1e-4)
    assert back["defending"].tolist() == [False, True, True, False]
    assert back["role"].tolist() == ["b", "a", "b", "c"]


def test_predicates_hand_computed():
    s = fitted()
    p = SchemaLayout(s).evaluate_predicates(encode(s, table()))
    assert p[:, 0].tolist() == [True, True, True, False]  # alive: hp > 0
    assert p[:, 1].tolist() == [False, False, True, True]  # low: hp < 30


def test_soft_predicates_agree_with_hard_ones_far_from_threshold():
    s = fitted()
    x = encode(s, table())
    heads = torch.zeros(4, s.head_dim)
    heads[:, 1] = x[:, 1]
    soft = SchemaLayout(s).soft_predicates(heads)
    hard = SchemaLayout(s).evaluate_predicates(x)
    # hp=20 is 5 tolerances below 30: p(low) = sigmoid(5)
    assert soft[2, 1].item() == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item(), rel=1e-4)
    assert ((soft > 0.5) == hard)[[0, 1, 2]].all()


def test_point_estimate_maps_heads_to_data_layout():
    s = fitted()
    heads = torch.tensor([[0.3, -0.1, 2.0, 0.1, 0.9, 0.0]])
    est = SchemaLayout(s).point_estimate(heads)
    assert est.tolist() == [[pytest.approx(0.3), pytest.approx(-0.1), 1.0, 1.0]]


def test_model_input_expands_categoricals_to_one_hot():
    s = fitted()
    x = encode(s, table())
    enc = SchemaLayout(s).model_input(x)
    assert enc.dtype == x.dtype and enc.shape == (4, s.input_dim)
    assert torch.equal(enc[:, :3], x[:, :3])  # continuous and binary columns as they are
    assert enc[:, 3:].tolist() == [[0, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]  # b, a, b, c


def test_to_dict_from_config_round_trip():
    s = fitted()
    again = FeatureSchema.from_config(s.to_dict())
    assert again == s


def test_unknown_category_is_a_clear_error():
    s = fitted()
    t = table()
    t["role"] = np.array(["a", "a", "zzz", "b"], dtype=object)
    with pytest.raises(SchemaError, match=r"not in its vocabulary \('zzz';"):
        encode(s, t)


def test_missing_required_column_names_it():
    t = table()
    del t["hp"]
    with pytest.raises(SchemaError, match="'hp' missing; columns found"):
        fit(FeatureSchema.from_config(SMALL), t)


def test_nan_in_required_column_is_counted():
    t = table()
    t["x"][1] = np.nan
    t["x"][2] = np.inf
    with pytest.raises(SchemaError, match=r"x: 2 rows.*drop_invalid"):
        fit(FeatureSchema.from_config(SMALL), t)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"features": {"a": {"kind": "weird"}}}, "kind 'weird'"),
        ({"features": {"a": {"kind": "continuous"}}}, "tolerance > 0"),
        (
            {
                "features": {"a": {"kind": "binary"}},
                "predicates": {"p": {"feature": "b", "op": ">", "value": 1}},
            },
            "does not declare",
        ),
        (
            {
                "features": {"a": {"kind": "binary"}},
                "predicates": {"p": {"feature": "a", "op": "~", "value": 1}},
            },
            "op '~'",
        ),
        ({"features": {"a": {"kind": "binary", "colour": 1}}}, "unexpected keyword"),
        ({"features": {}}, "no features"),
        (
            {
                "features": {"a": {"kind": "binary"}},
                "predicates": {"a": {"feature": "a", "op": "==", "value": 1}},
            },
            "predicates named like features",
        ),
    ],
)
def test_bad_declarations(bad, match):
    with pytest.raises(SchemaError, match=match):
        FeatureSchema.from_config(bad)


def test_default_agentfarm_schema_declares_meaning():
    s = FeatureSchema.from_config(OmegaConf.load(CONF_DIR / "schema" / "agentfarm.yaml"))
    assert {
        "position_x",
        "position_y",
        "resource_level",
        "current_health",
        "starvation_counter",
        "is_defending",
        "total_reward",
        "age",
        "agent_type",
    } <= set(s.names)
    assert [p.name for p in s.predicates] == ["alive", "starving", "low_health"]
    assert s.feature("position_z").optional and s.feature("starting_health").optional
