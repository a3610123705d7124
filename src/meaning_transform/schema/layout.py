"""The schema's torch layout: encoder input, decoder heads, native units and predicates.

``SchemaLayout`` is built once from a fitted schema and owned by whatever computes on tensors
(the LightningModule, its losses and metrics, the grid path). Its index and constant tensors are
non-persistent buffers: they follow the module to its device and are not saved in checkpoints
(the schema in the hyperparameters rebuilds them).
"""

from __future__ import annotations

import torch
from torch import nn

from meaning_transform.schema.declaration import OPS, FeatureSchema, Predicate


class SchemaLayout(nn.Module):
    """Tensor-side view of a fitted schema (see ``schema.declaration`` for the layouts)."""

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        schema.require_fitted()
        self.schema = schema
        features = schema.features
        mean = [
            schema.normalizers[f.name].mean if f.kind == "continuous" else 0.0 for f in features
        ]
        std = [schema.normalizers[f.name].std if f.kind == "continuous" else 1.0 for f in features]
        self._buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self._buffer("std", torch.tensor(std, dtype=torch.float32))
        self._buffer("tolerance", torch.tensor([f.tolerance for f in features]))
        continuous = [i for i, f in enumerate(features) if f.kind == "continuous"]
        units = [self.std[i] / self.tolerance[i] for i in continuous]  # normalized -> tolerances
        self._buffer("continuous_units", torch.tensor(units, dtype=torch.float32))
        slices = schema.head_slices
        for kind in ("continuous", "binary"):
            of_kind = [(i, f) for i, f in enumerate(features) if f.kind == kind]
            self._buffer(f"{kind}_columns", torch.tensor([i for i, _ in of_kind], dtype=torch.long))
            heads = [slices[f.name].start for _, f in of_kind]
            self._buffer(f"{kind}_heads", torch.tensor(heads, dtype=torch.long))
            weights = [f.weight for _, f in of_kind]
            self._buffer(f"{kind}_weights", torch.tensor(weights, dtype=torch.float32))
        source, code = _input_columns(schema)
        self._buffer("input_source", torch.tensor(source, dtype=torch.long))
        self._buffer("input_code", torch.tensor(code, dtype=torch.float32))
        self._buffer("input_one_hot", ~self.input_code.isnan())
        self.input_is_data = not bool(self.input_one_hot.any())  # no categoricals: x itself
        weights = torch.tensor([p.weight for p in schema.predicates], dtype=torch.float32)
        self._buffer("predicate_weights", weights)
        self._buffer("predicate_weight_total", weights.sum().clamp_min(1e-12))
        self.predicate_tests = [
            (schema.columns[p.feature], OPS[p.op], _threshold(schema, p)) for p in schema.predicates
        ]
        self.threshold_predicates = _all_threshold_comparisons(schema)
        if self.threshold_predicates:
            feats = [schema.feature(p.feature) for p in schema.predicates]
            norms = [schema.normalizers[f.name] for f in feats]
            self._buffer("pred_heads", torch.tensor([slices[f.name].start for f in feats]))
            self._buffer("pred_std", torch.tensor([n.std for n in norms]))
            self._buffer("pred_mean", torch.tensor([n.mean for n in norms]))
            self._buffer("pred_value", torch.tensor([float(p.value) for p in schema.predicates]))
            self._buffer("pred_tolerance", torch.tensor([f.tolerance for f in feats]))
            signs = [1.0 if p.op in (">", ">=") else -1.0 for p in schema.predicates]
            self._buffer("pred_sign", torch.tensor(signs))

    def _buffer(self, name: str, value: torch.Tensor) -> None:
        if value.is_floating_point():
            value = value.float()
        self.register_buffer(name, value, persistent=False)

    def kind(self, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(data columns, head columns, weights) of the continuous or binary features."""
        return (
            getattr(self, f"{kind}_columns"),
            getattr(self, f"{kind}_heads"),
            getattr(self, f"{kind}_weights"),
        )

    # ------------------------------------------------------------------ data tensor
    def native(self, x: torch.Tensor) -> torch.Tensor:
        """Data tensor -> same-layout tensor with continuous columns in native units."""
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Data tensor -> encoder input (categoricals expanded to one-hot).

        One gather of the input's source columns, then each one-hot column is ``code ==``
        its category: a fixed handful of ops for any number of categoricals, and no check of
        the codes on the host (the table codec only writes codes of the vocabulary).
        """
        if self.input_is_data:
            return x
        cols = x[:, self.input_source]
        return torch.where(self.input_one_hot, (cols == self.input_code).to(x.dtype), cols)

    def point_estimate(self, heads: torch.Tensor) -> torch.Tensor:
        """Decoder output -> data tensor (continuous value, binary logit>0, categorical argmax)."""
        cols = []
        for f, sl in zip(self.schema.features, self.schema.head_slices.values(), strict=True):
            out = heads[:, sl]
            if f.kind == "continuous":
                cols.append(out[:, 0])
            elif f.kind == "binary":
                cols.append((out[:, 0] > 0).to(heads.dtype))
            else:
                cols.append(out.argmax(dim=1).to(heads.dtype))
        return torch.stack(cols, dim=1)

    # ------------------------------------------------------------------ predicates
    def evaluate_predicates(self, x: torch.Tensor) -> torch.Tensor:
        """Data tensor -> bool tensor [N, n_predicates] of each predicate's truth.

        Compared in the data tensor's own units, with the threshold converted by the table
        codec's arithmetic: a value equal to the threshold encodes to the very same float32, so
        ``starvation_counter > 0`` is false at 0 (mapped back to native units, a float32 0 comes
        back as +-1e-8 and the comparison with 0 was a coin flip).
        """
        if not self.predicate_tests:
            return torch.zeros(x.shape[0], 0, dtype=torch.bool, device=x.device)
        return torch.stack([op(x[:, col], t) for col, op, t in self.predicate_tests], dim=1)

    def soft_predicates(self, heads: torch.Tensor) -> torch.Tensor:
        """Differentiable probability of each predicate from decoder output [N, n_predicates].

        Continuous: sigmoid of the signed distance to the threshold, in units of the feature's
        tolerance (so a prediction one tolerance past the threshold is ~73% sure). Discrete:
        the head's probability of the compared value.
        """
        schema = self.schema
        if not schema.predicates:
            return heads.new_zeros(heads.shape[0], 0)
        if self.threshold_predicates:  # every predicate is a continuous >, >=, <, <=: one pass
            value = heads[:, self.pred_heads] * self.pred_std + self.pred_mean
            return torch.sigmoid((value - self.pred_value) / self.pred_tolerance * self.pred_sign)
        slices = schema.head_slices
        out = []
        for p in schema.predicates:
            f = schema.feature(p.feature)
            h = heads[:, slices[f.name]]
            if f.kind == "continuous":
                norm = schema.normalizers[f.name]
                value = h[:, 0] * norm.std + norm.mean
                signed = (value - float(p.value)) / f.tolerance
                prob = torch.sigmoid(signed if p.op in (">", ">=") else -signed)
                if p.op in ("==", "!="):
                    near = torch.exp(-(((value - float(p.value)) / f.tolerance) ** 2))
                    prob = near if p.op == "==" else 1 - near
            else:
                if f.kind == "binary":
                    p1 = torch.sigmoid(h[:, 0])
                    prob = p1 if float(p.value) >= 0.5 else 1 - p1
                else:
                    prob = torch.softmax(h, dim=1)[:, int(schema.predicate_threshold(p))]
                if p.op == "!=":
                    prob = 1 - prob
            out.append(prob)
        return torch.stack(out, dim=1)


def _threshold(schema: FeatureSchema, p: Predicate) -> float:
    """A predicate's comparison value in data-tensor units, as float32 ``encode`` gives it."""
    return schema.data_value(p.feature, schema.predicate_threshold(p))


def _all_threshold_comparisons(schema: FeatureSchema) -> bool:
    """True when every predicate is a continuous >, >=, <, <= (soft_predicates' one-pass case)."""
    return bool(schema.predicates) and all(
        schema.feature(p.feature).kind == "continuous" and p.op in (">", ">=", "<", "<=")
        for p in schema.predicates
    )


def _input_columns(schema: FeatureSchema) -> tuple[list[int], list[float]]:
    """model_input's layout: per encoder-input column, its data column and, for a one-hot
    column of a categorical, the category code it tests for (NaN: the value is copied)."""
    source: list[int] = []
    code: list[float] = []
    for i, f in enumerate(schema.features):
        vocab = schema.vocab_size(f) if f.kind == "categorical" else 0
        source += [i] * max(vocab, 1)
        code += [float(c) for c in range(vocab)] if vocab else [float("nan")]
    return source, code
