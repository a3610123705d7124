"""The meaning grid: hand-computed symbols, tolerance and predicates kept by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meaning_transform.data.synthetic import generate_synthetic
from meaning_transform.grid import GridSymbols, MeaningGrid
from meaning_transform.metrics import SemanticDrift
from meaning_transform.schema import FeatureSchema
from meaning_transform.schema.layout import SchemaLayout
from meaning_transform.schema.table import encode, fit

DECL = {
    "features": {
        "x": {"kind": "continuous", "tolerance": 0.5},
        "hp": {"kind": "continuous", "tolerance": 2.0},
        "flag": {"kind": "binary"},
        "role": {"kind": "categorical"},
    },
    "predicates": {
        "alive": {"feature": "hp", "op": ">", "value": 0},
        "low": {"feature": "hp", "op": "<", "value": 29},  # inside cell 7 = [26, 30]
    },
}
TABLE = {
    "x": np.array([2.4, -0.6, 0.0, 7.0, 3.4, 1.0]),
    "hp": np.array([100.0, -1.0, 1.0, 28.0, 29.5, 31.0]),
    "flag": np.array([0, 1, 1, 0, 0, 1]),
    "role": np.array(["a", "b", "a", "c", "b", "a"], dtype=object),
}


def test_hand_computed_symbols_and_midpoints():
    schema = fit(FeatureSchema.from_config(DECL), TABLE)
    grid = MeaningGrid(schema)
    symbols = grid.encode(encode(schema, TABLE))
    # x, step 1: rint(v)
    np.testing.assert_array_equal(symbols[:, 0], [2, -1, 0, 7, 3, 1])
    # hp, step 4: m = rint(v / 4) plus crossings passed: "> 0" (in cell 0), ">= 29" (in cell 7).
    # 100: m 25 + 2; -1: m 0 + 0; 1: m 0 + 1; 28: m 7 + 1; 29.5: m 7 + 2; 31: m 8 + 2
    np.testing.assert_array_equal(symbols[:, 1], [27, 0, 1, 8, 9, 10])
    np.testing.assert_array_equal(symbols[:, 2], TABLE["flag"])
    np.testing.assert_array_equal(symbols[:, 3], [0, 1, 0, 2, 1, 0])  # a, b, c
    native = SchemaLayout(schema).native(grid.decode(symbols)).double().numpy()
    np.testing.assert_allclose(native[:, 0], [2, -1, 0, 7, 3, 1], atol=1e-5)
    # 100 -> cell [98, 102]; -1 -> [-2, 0] (t on the lower side of ">"); 1 -> (0, 2];
    # 28 -> [26, 29) (t on the upper side of "<"); 29.5 -> [29, 30]; 31 -> [30, 34]
    np.testing.assert_allclose(native[:, 1], [100, -1, 1, 27.5, 29.5, 32], atol=1e-5)
    np.testing.assert_array_equal(native[:, 2:], encode(schema, TABLE)[:, 2:].numpy())


def test_equality_predicate_gets_a_point_cell():
    decl = {**DECL, "predicates": {"full": {"feature": "hp", "op": "==", "value": 99}}}
    schema = fit(FeatureSchema.from_config(decl), TABLE)
    grid = MeaningGrid(schema)
    # cell 25 = [98, 102] split at 99: [98, 99) is symbol 25, {99} 26, (99, 102] 27
    symbols = np.array([[0, 25, 0, 0], [0, 26, 0, 0], [0, 27, 0, 0], [0, 24, 0, 0]])
    decoded = grid.decode(symbols)
    native = SchemaLayout(schema).native(decoded).double().numpy()[:, 1]
    np.testing.assert_allclose(native, [98.5, 99, 100.5, 96], atol=1e-5)
    # the point cell decodes to the very float32 that schema.table.encode gives the native 99
    expected = encode(schema, {**TABLE, "hp": np.full(6, 99.0)})[0, 1]
    assert decoded[1, 1] == expected
    # and the predicate's truth (float32, as the drift metric reads it) is kept
    table = {**TABLE, "hp": np.array([99.0, 98.5, 99.5, 97.0, 100.0, 101.0])}
    x = encode(schema, table)
    again = grid.decode(grid.encode(x))
    torch.testing.assert_close(
        SchemaLayout(schema).evaluate_predicates(again), SchemaLayout(schema).evaluate_predicates(x)
    )


@pytest.fixture(scope="module")
def synthetic(agentfarm_schema_module):
    table = generate_synthetic(20_000, seed=4)
    schema = fit(agentfarm_schema_module, table)
    return schema, encode(schema, table)


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
def test_within_k_tolerances_and_every_predicate_kept(synthetic, k):
    schema, x = synthetic
    grid = MeaningGrid(schema, k)
    decoded = grid.decode(grid.encode(x))
    err = (
        SchemaLayout(schema).native(decoded).double() - SchemaLayout(schema).native(x).double()
    ).abs()
    for i, f in enumerate(schema.features):
        if f.kind == "continuous":
            # float32 data: up to a few ulps of |x| * std past k * tolerance (see metrics.py)
            assert err[:, i].max().item() <= k * f.tolerance * (1 + 1e-4), f.name
        else:
            torch.testing.assert_close(decoded[:, i], x[:, i], rtol=0, atol=0)
    torch.testing.assert_close(
        SchemaLayout(schema).evaluate_predicates(decoded),
        SchemaLayout(schema).evaluate_predicates(x),
    )


def test_k1_has_drift_exactly_zero(synthetic):
    schema, x = synthetic
    grid = MeaningGrid(schema)
    metric = SemanticDrift(schema)
    metric.update(x, grid.decode(grid.encode(x)))
    assert metric.compute()["drift"].item() == 0.0


def test_whole_cells_come_back_identical(synthetic):
    schema, x = synthetic
    pos = schema.columns["position_x"]  # whole cells, tolerance 0.5: every value is a centre
    decoded = MeaningGrid(schema).decode(MeaningGrid(schema).encode(x))
    assert torch.equal(decoded[:, pos], x[:, pos])


def test_needs_a_fitted_schema_and_k_at_least_1(agentfarm_schema_module):
    with pytest.raises(ValueError, match="fitted"):
        MeaningGrid(agentfarm_schema_module)
    with pytest.raises(ValueError, match="k must be >= 1"):
        MeaningGrid(fit(agentfarm_schema_module, generate_synthetic(500)), k=0.5)


#: every op on both continuous features; thresholds inside cells and on a cell edge (hp 30)
EDGE_DECL = {
    **DECL,
    "predicates": {
        "x_ge": {"feature": "x", "op": ">=", "value": 1.0},
        "x_le": {"feature": "x", "op": "<=", "value": 3.2},
        "x_eq": {"feature": "x", "op": "==", "value": 5.0},
        "alive": {"feature": "hp", "op": ">", "value": 0},
        "low": {"feature": "hp", "op": "<", "value": 29},
        "full": {"feature": "hp", "op": "!=", "value": 30},
    },
}


def _edge_values(schema: FeatureSchema, k: float) -> torch.Tensor:
    """Data tensor of thresholds, cell edges and huge values, and their float32 neighbours."""
    grid = MeaningGrid(schema, k)
    rng = np.random.default_rng(0)
    columns = {}
    for name, step in grid.steps.items():
        ts = [float(p.value) for p in schema.predicates if p.feature == name]
        edges = [(m + 0.5) * step for m in range(-4, 30)]
        columns[name] = np.array(
            [*ts, *edges, 0.0, -0.0, 1e12, -1e12, 3e15, *rng.uniform(-50, 120, 64)]
        )
    n = max(len(v) for v in columns.values())
    table = {name: np.resize(v, n) for name, v in columns.items()}
    table["flag"] = np.resize(TABLE["flag"], n)
    table["role"] = np.resize(TABLE["role"], n)
    x = encode(schema, table)
    # the float32 neighbours of every value: where float noise meets a threshold
    up, down = torch.nextafter(x, x + 1), torch.nextafter(x, x - 1)
    cont = torch.tensor([f.kind == "continuous" for f in schema.features])
    return torch.cat([x, torch.where(cont, up, x), torch.where(cont, down, x)])


@pytest.mark.parametrize("k", [1, 2.5])
@pytest.mark.parametrize("decl", [DECL, EDGE_DECL], ids=["lt-gt", "every-op"])
def test_torch_symbols_identical_to_the_reference(decl, k, synthetic):
    schema = fit(FeatureSchema.from_config(decl), TABLE)
    cases = [(schema, _edge_values(schema, k))]
    if decl is DECL:  # and the default schema on synthetic data
        cases.append(synthetic)
    for schema, x in cases:
        grid = MeaningGrid(schema, k)
        columns = list(range(len(schema.features)))
        torch_grid = GridSymbols(grid, columns)
        symbols = grid.encode(x)
        np.testing.assert_array_equal(torch_grid.encode(x).numpy(), symbols)
        assert torch.equal(torch_grid.decode(torch.from_numpy(symbols)), grid.decode(symbols))
        # every symbol around the used ones decodes the same (sub-cells, point cells)
        around = (
            torch.from_numpy(symbols[:64]) + torch.arange(-3, 4).repeat_interleave(10)[:64, None]
        )
        around[:, 2:] = torch.from_numpy(symbols[:64, 2:])  # binary / categorical stay valid
        assert torch.equal(torch_grid.decode(around), grid.decode(around.numpy()))
        # a subset of columns, in another order, as the grid path asks for its table channels
        sub = GridSymbols(grid, columns[::-1][:3])
        np.testing.assert_array_equal(sub.encode(x).numpy(), symbols[:, columns[::-1][:3]])
