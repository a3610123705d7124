"""The feature schema: the single declaration of what an agent state is and what it means.

A schema lists features (column, kind, unit, tolerance, group, weight) and predicates (simple
comparisons on one feature). Everything else -- the data tensor layout, the decoder heads, the
losses, the drift metrics and the plots -- is derived from it; no tensor index is written by hand
anywhere else.

Data tensor layout ("codes" of the data layer): one float32 column per feature, in schema order:
continuous -> standardized value ``(x - mean) / std``; binary -> 0.0 / 1.0; categorical -> the
category's index in the vocabulary. Decoder head layout: one column per continuous feature, one
logit per binary feature, one logit per category of each categorical feature.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from meaning_transform.errors import SchemaError
from meaning_transform.messages import few

log = logging.getLogger(__name__)

Table = dict[str, np.ndarray]
#: the largest usable magnitude: the model computes in float32 and squares values (variance,
#: squared errors), so anything above sqrt(float32 max) ~ 1.8e19 would overflow to inf
MAX_MAGNITUDE = float(np.sqrt(np.finfo(np.float32).max))
#: what an invalid value is, as error messages say it
INVALID_VALUES = f"NULL/NaN/inf or out-of-range (|x| > {MAX_MAGNITUDE:.2g}, or outside min/max)"
KINDS = ("continuous", "binary", "categorical")
SOURCES = ("agent_states", "agents")
_OPS = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Feature:
    """One column of an agent state and how its meaning is judged."""

    name: str
    kind: str
    unit: str = ""
    tolerance: float = 0.0
    group: str = "other"
    weight: float = 1.0
    optional: bool = False
    source: str = "agent_states"
    categories: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SchemaError(f"feature {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.source not in SOURCES:
            raise SchemaError(
                f"feature {self.name!r}: source {self.source!r} is not one of {SOURCES}"
            )
        if self.kind == "continuous" and not self.tolerance > 0:
            raise SchemaError(
                f"feature {self.name!r}: continuous features need tolerance > 0 "
                f"(native units), got {self.tolerance}"
            )
        if not self.weight >= 0:
            raise SchemaError(f"feature {self.name!r}: weight must be >= 0, got {self.weight}")
        if self.min is not None and self.max is not None and not self.min <= self.max:
            raise SchemaError(f"feature {self.name!r}: min {self.min} is above max {self.max}")

    def out_of_range(self, col: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Rows (among ``present``) whose value is above MAX_MAGNITUDE or outside [min, max]."""
        if self.kind == "categorical":
            return np.zeros(len(col), dtype=bool)
        vals = np.asarray(np.where(present, col, 0.0), dtype=np.float64)
        bad = np.abs(vals) > MAX_MAGNITUDE
        if self.min is not None:
            bad |= vals < self.min
        if self.max is not None:
            bad |= vals > self.max
        return bad & present


@dataclass(frozen=True)
class Predicate:
    """A meaning an observer reads off a state: ``feature <op> value``."""

    name: str
    feature: str
    op: str
    value: float | str
    group: str = "predicates"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise SchemaError(
                f"predicate {self.name!r}: op {self.op!r} is not one of {tuple(_OPS)}"
            )
        if not self.weight >= 0:
            raise SchemaError(f"predicate {self.name!r}: weight must be >= 0, got {self.weight}")


@dataclass(frozen=True)
class Normalizer:
    """Standardization of one continuous feature, fitted on the training split.

    ``lattice``: 1.0 when every training value is a whole number (positions, counters, ages),
    else 0.0 (values anywhere). The grid path keeps its steps on that lattice.
    """

    mean: float
    std: float
    lattice: float = 0.0


@dataclass(frozen=True)
class FeatureSchema:
    """Features, predicates and (once fitted) normalization and vocabularies."""

    features: tuple[Feature, ...]
    predicates: tuple[Predicate, ...] = ()
    normalizers: dict[str, Normalizer] = field(default_factory=dict)
    fitted: bool = False

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if not names:
            raise SchemaError("schema declares no features")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SchemaError(f"schema declares features more than once: {dupes}")
        clash = sorted({p.name for p in self.predicates} & set(names))
        if clash:  # both are reported as drift/<name>
            raise SchemaError(f"predicates named like features: {clash}; rename the predicates")
        for p in self.predicates:
            if p.feature not in names:
                raise SchemaError(
                    f"predicate {p.name!r} reads feature {p.feature!r}, "
                    f"which the schema does not declare (features: {names})"
                )
            feat = self.feature(p.feature)
            if feat.kind == "continuous" and isinstance(p.value, str):
                raise SchemaError(f"predicate {p.name!r}: value must be a number")
            if feat.kind != "continuous" and p.op not in ("==", "!="):
                raise SchemaError(
                    f"predicate {p.name!r}: {feat.kind} feature {p.feature!r} "
                    "only supports == and !="
                )

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FeatureSchema:
        """Build from the YAML form: ``features: {name: {...}}, predicates: {name: {...}}``."""
        cfg = _plain(cfg)
        feats_cfg = cfg.get("features") or {}
        preds_cfg = cfg.get("predicates") or {}
        unknown = set(cfg) - {"features", "predicates", "normalizers", "fitted"}
        if unknown:
            raise SchemaError(f"schema has unknown keys {sorted(unknown)}")
        features = []
        for name, spec in feats_cfg.items():
            spec = dict(spec or {})
            cats = spec.pop("categories", None)
            try:
                features.append(
                    Feature(name=name, categories=tuple(cats) if cats else None, **spec)
                )
            except TypeError as e:
                raise SchemaError(f"feature {name!r}: {e}") from None
        preds = []
        for name, spec in preds_cfg.items():
            try:
                preds.append(Predicate(name=name, **dict(spec)))
            except TypeError as e:
                raise SchemaError(f"predicate {name!r}: {e}") from None
        normalizers = {k: Normalizer(**v) for k, v in (cfg.get("normalizers") or {}).items()}
        return cls(tuple(features), tuple(preds), normalizers, bool(cfg.get("fitted", False)))

    def to_dict(self) -> dict[str, Any]:
        """Plain-python form (YAML/JSON/checkpoint safe); ``from_config`` inverts it."""
        feats = {}
        for f in self.features:
            d = asdict(f)
            d.pop("name")
            d["categories"] = list(f.categories) if f.categories is not None else None
            feats[f.name] = d
        preds = {
            p.name: {k: v for k, v in asdict(p).items() if k != "name"} for p in self.predicates
        }
        return {
            "features": feats,
            "predicates": preds,
            "normalizers": {k: asdict(v) for k, v in self.normalizers.items()},
            "fitted": self.fitted,
        }

    # ----------------------------------------------------------------- lookups
    def feature(self, name: str) -> Feature:
        """The feature called ``name``."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        """Feature names in layout order."""
        return [f.name for f in self.features]

    @property
    def columns(self) -> dict[str, int]:
        """Column index of each feature in the data tensor."""
        return {f.name: i for i, f in enumerate(self.features)}

    def of_kind(self, kind: str) -> list[Feature]:
        """Features of one kind, in layout order."""
        return [f for f in self.features if f.kind == kind]

    def index_of_kind(self, kind: str) -> list[int]:
        """Data-tensor columns of the features of one kind."""
        return [i for i, f in enumerate(self.features) if f.kind == kind]

    @property
    def groups(self) -> list[str]:
        """Groups of features and predicates, in first-seen order."""
        seen: dict[str, None] = {}
        for item in (*self.features, *self.predicates):
            seen.setdefault(item.group, None)
        return list(seen)

    def vocab_size(self, f: Feature) -> int:
        """Number of categories of a categorical feature (needs a fitted schema)."""
        self._require_fitted()
        assert f.categories is not None
        return len(f.categories)

    def head_width(self, f: Feature) -> int:
        """Decoder output columns for one feature."""
        return self.vocab_size(f) if f.kind == "categorical" else 1

    @property
    def head_slices(self) -> dict[str, slice]:
        """Decoder-output columns of each feature."""
        out, start = {}, 0
        for f in self.features:
            width = self.head_width(f)
            out[f.name] = slice(start, start + width)
            start += width
        return out

    @property
    def head_dim(self) -> int:
        """Width of the decoder output."""
        return sum(self.head_width(f) for f in self.features)

    def kind_layout(
        self, kind: str, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(data columns, head columns, weights) of the continuous or binary features."""
        key = (kind, str(device))
        cache = self.__dict__.setdefault("_layout_cache", {})
        if key not in cache:
            slices = self.head_slices
            feats = [(i, f) for i, f in enumerate(self.features) if f.kind == kind]
            cache[key] = (
                torch.tensor([i for i, _ in feats], dtype=torch.long, device=device),
                torch.tensor(
                    [slices[f.name].start for _, f in feats], dtype=torch.long, device=device
                ),
                torch.tensor([f.weight for _, f in feats], dtype=torch.float32, device=device),
            )
        return cache[key]

    @property
    def total_feature_weight(self) -> float:
        """Sum of feature weights."""
        return float(sum(f.weight for f in self.features))

    @property
    def input_dim(self) -> int:
        """Width of the encoder input (categoricals one-hot)."""
        return self.head_dim

    # ----------------------------------------------------------------- fitting
    def fit(self, table: Table) -> FeatureSchema:
        """Fitted copy: drop unusable optional features, learn vocabularies and normalization."""
        kept = []
        for f in self.features:
            if f.name not in table:
                if f.optional:
                    log.info("optional feature %r dropped: column not in the data", f.name)
                    continue
                raise SchemaError(
                    f"required column {f.name!r} missing; columns found: {sorted(table)}"
                )
            col = table[f.name]
            if f.optional and _is_unusable(col):
                log.info("optional feature %r dropped: column is entirely NULL or constant", f.name)
                continue
            kept.append(f)
        fitted: list[Feature] = []
        normalizers: dict[str, Normalizer] = {}
        for f in kept:
            col = table[f.name]
            if f.kind == "categorical" and f.categories is None:
                present = _present(col)
                values = _distinct_str(col if present.all() else col[present])
                f = replace(f, categories=tuple(values.tolist()))
            if f.kind == "continuous":
                vals = np.asarray(col, dtype=np.float64)
                finite = np.isfinite(vals)
                if not finite.all():
                    vals = vals[finite]
                mean = float(vals.mean()) if vals.size else 0.0
                std = float(vals.std()) if vals.size else 1.0
                # A constant column keeps std 1 so encode/decode stay exact inverses.
                whole = bool(vals.size) and bool(np.all(vals == np.round(vals)))
                normalizers[f.name] = Normalizer(
                    mean, std if std > 1e-12 else 1.0, 1.0 if whole else 0.0
                )
            fitted.append(f)
        schema = FeatureSchema(tuple(fitted), self._kept_predicates(fitted), normalizers, True)
        schema.check_table(table)
        return schema

    def _kept_predicates(self, kept: list[Feature]) -> tuple[Predicate, ...]:
        names = {f.name for f in kept}
        out = []
        for p in self.predicates:
            if p.feature in names:
                out.append(p)
            else:
                log.info("predicate %r dropped: its feature %r was dropped", p.name, p.feature)
        return tuple(out)

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise SchemaError("schema is not fitted yet; call schema.fit(train_table) first")

    # ----------------------------------------------------------------- validation
    def invalid_rows(self, table: Table) -> dict[str, np.ndarray]:
        """Per feature, the mask of rows with an invalid value (see INVALID_VALUES), if any."""
        bad = {}
        for f in self.features:
            if f.name not in table:
                continue
            present = _present(table[f.name])
            mask = ~present | f.out_of_range(table[f.name], present)
            if mask.any():
                bad[f.name] = mask
        return bad

    def check_table(self, table: Table) -> None:
        """Raise SchemaError naming the problem if ``table`` cannot be encoded."""
        missing = [f.name for f in self.features if f.name not in table]
        if missing:
            raise SchemaError(
                f"required column(s) {missing} missing; columns found: {sorted(table)}"
            )
        bad = self.invalid_rows(table)
        if bad:
            detail = ", ".join(f"{k}: {int(v.sum())} rows" for k, v in bad.items())
            raise SchemaError(
                f"{INVALID_VALUES} values in required columns ({detail}); "
                "fix the data or set data.drop_invalid=true to drop those rows"
            )
        for f in self.of_kind("binary"):
            vals = np.asarray(table[f.name], dtype=np.float64)
            if ((vals != 0.0) & (vals != 1.0)).any():
                vals = np.unique(vals)
                raise SchemaError(
                    f"binary column {f.name!r} holds values other than 0/1: {vals[:5].tolist()}"
                )
        if self.fitted:
            for f in self.of_kind("categorical"):
                assert f.categories is not None
                vals = _distinct_str(table[f.name])
                unseen = sorted(set(vals.tolist()) - set(f.categories))
                if unseen:
                    raise SchemaError(
                        f"categorical column {f.name!r} has {len(unseen)} value(s) not in its "
                        f"vocabulary ({few(map(repr, unseen))}; vocabulary: "
                        f"{few(map(repr, f.categories))}); list them in "
                        f"schema.features.{f.name}.categories"
                    )

    # ----------------------------------------------------------------- encode / decode
    def encode(self, table: Table) -> torch.Tensor:
        """Table of native values -> float32 data tensor [N, n_features]."""
        self._require_fitted()
        self.check_table(table)
        n = len(table[self.features[0].name])
        out = np.empty((n, len(self.features)), dtype=np.float32)
        scratch = np.empty(n, dtype=np.float64)
        for i, f in enumerate(self.features):
            col = table[f.name]
            if f.kind == "continuous":
                norm = self.normalizers[f.name]
                np.subtract(np.asarray(col, dtype=np.float64), norm.mean, out=scratch)
                out[:, i] = np.divide(scratch, norm.std, out=scratch)
            elif f.kind == "binary":
                out[:, i] = col.astype(np.float32)
            else:
                out[:, i] = _category_index(col, f.categories)
        return torch.from_numpy(out)

    def decode(self, x: torch.Tensor) -> Table:
        """Data tensor -> table of native values (categories as strings)."""
        self._require_fitted()
        arr = x.detach().cpu().to(torch.float64).numpy()
        table: Table = {}
        for i, f in enumerate(self.features):
            col = arr[:, i]
            if f.kind == "continuous":
                norm = self.normalizers[f.name]
                table[f.name] = col * norm.std + norm.mean
            elif f.kind == "binary":
                table[f.name] = col >= 0.5
            else:
                assert f.categories is not None
                idx = np.clip(np.rint(col), 0, len(f.categories) - 1).astype(np.int64)
                table[f.name] = np.asarray(f.categories, dtype=object)[idx]
        return table

    def native(self, x: torch.Tensor) -> torch.Tensor:
        """Data tensor -> same-layout tensor with continuous columns in native units."""
        self._require_fitted()
        mean, std = self.affine(x.device)
        return x * std + mean

    def affine(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Per-column (mean, std) to map data-tensor columns to native units (1/0 for discrete)."""
        mean = torch.zeros(len(self.features), dtype=torch.float32)
        std = torch.ones(len(self.features), dtype=torch.float32)
        for i, f in enumerate(self.features):
            if f.kind == "continuous":
                mean[i] = self.normalizers[f.name].mean
                std[i] = self.normalizers[f.name].std
        return mean.to(device), std.to(device)

    def tolerances(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Per-column tolerance in native units (0 for discrete features)."""
        return torch.tensor([f.tolerance for f in self.features], device=device)

    # ----------------------------------------------------------------- model-facing layout
    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Data tensor -> encoder input (categoricals expanded to one-hot)."""
        parts = []
        for start, stop, vocab in self._input_segments():
            if vocab:
                parts.append(torch.nn.functional.one_hot(x[:, start].long(), vocab).to(x.dtype))
            else:
                parts.append(x[:, start:stop])
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _input_segments(self) -> tuple[tuple[int, int, int], ...]:
        """model_input's layout: (start, stop, 0) per run of consecutive non-categorical data
        columns (copied as one slice), (column, column + 1, vocab size) per categorical."""
        cache = self.__dict__.setdefault("_layout_cache", {})
        if "input_segments" not in cache:
            segments: list[tuple[int, int, int]] = []
            for i, f in enumerate(self.features):
                if f.kind == "categorical":
                    segments.append((i, i + 1, self.vocab_size(f)))
                elif segments and not segments[-1][2] and segments[-1][1] == i:
                    segments[-1] = (segments[-1][0], i + 1, 0)
                else:
                    segments.append((i, i + 1, 0))
            cache["input_segments"] = tuple(segments)
        return cache["input_segments"]

    def point_estimate(self, heads: torch.Tensor) -> torch.Tensor:
        """Decoder output -> data tensor (continuous value, binary logit>0, categorical argmax)."""
        cols = []
        for f, sl in zip(self.features, self.head_slices.values(), strict=True):
            out = heads[:, sl]
            if f.kind == "continuous":
                cols.append(out[:, 0])
            elif f.kind == "binary":
                cols.append((out[:, 0] > 0).to(heads.dtype))
            else:
                cols.append(out.argmax(dim=1).to(heads.dtype))
        return torch.stack(cols, dim=1)

    # ----------------------------------------------------------------- predicates
    def predicate_threshold(self, p: Predicate) -> float:
        """The predicate's comparison value in data-tensor units of its feature's column."""
        f = self.feature(p.feature)
        if f.kind == "categorical":
            assert f.categories is not None
            if str(p.value) not in f.categories:
                raise SchemaError(
                    f"predicate {p.name!r} compares with {p.value!r}, not a category of "
                    f"{f.name!r} {list(f.categories)}"
                )
            return float(f.categories.index(str(p.value)))
        return float(p.value)

    def data_value(self, name: str, value: float) -> float:
        """A native value of feature ``name`` in data-tensor units, as float32 ``encode`` gives."""
        f = self.feature(name)
        if f.kind == "continuous":
            norm = self.normalizers[f.name]
            value = (np.float64(value) - norm.mean) / norm.std
        return float(np.float32(value))

    def evaluate_predicates(self, x: torch.Tensor) -> torch.Tensor:
        """Data tensor -> bool tensor [N, n_predicates] of each predicate's truth.

        Compared in the data tensor's own units, with the threshold converted by ``encode``'s
        arithmetic: a value equal to the threshold encodes to the very same float32, so
        ``starvation_counter > 0`` is false at 0 (mapped back to native units, a float32 0 comes
        back as +-1e-8 and the comparison with 0 was a coin flip).
        """
        cols = self.columns
        out = [
            _OPS[p.op](
                x[:, cols[p.feature]], self.data_value(p.feature, self.predicate_threshold(p))
            )
            for p in self.predicates
        ]
        if not out:
            return torch.zeros(x.shape[0], 0, dtype=torch.bool, device=x.device)
        return torch.stack(out, dim=1)

    def soft_predicates(self, heads: torch.Tensor) -> torch.Tensor:
        """Differentiable probability of each predicate from decoder output [N, n_predicates].

        Continuous: sigmoid of the signed distance to the threshold, in units of the feature's
        tolerance (so a prediction one tolerance past the threshold is ~73% sure). Discrete:
        the head's probability of the compared value.
        """
        if not self.predicates:
            return heads.new_zeros(heads.shape[0], 0)
        fast = self._threshold_predicates(heads.device) if heads.dtype == torch.float32 else None
        if fast is not None:  # every predicate is a continuous >, >=, <, <=: one pass for all
            cols, std, mean, value, tolerance, sign = fast
            return torch.sigmoid((heads[:, cols] * std + mean - value) / tolerance * sign)
        slices = self.head_slices
        out = []
        for p in self.predicates:
            f = self.feature(p.feature)
            h = heads[:, slices[f.name]]
            if f.kind == "continuous":
                norm = self.normalizers[f.name]
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
                    prob = torch.softmax(h, dim=1)[:, int(self.predicate_threshold(p))]
                if p.op == "!=":
                    prob = 1 - prob
            out.append(prob)
        if not out:
            return heads.new_zeros(heads.shape[0], 0)
        return torch.stack(out, dim=1)

    def _threshold_predicates(self, device: torch.device | str) -> tuple[torch.Tensor, ...] | None:
        """(head columns, std, mean, value, tolerance, sign) of the predicates when all are
        continuous comparisons >, >=, <, <= (soft_predicates' vectorized case), else None."""
        cache = self.__dict__.setdefault("_layout_cache", {})
        key = ("threshold_predicates", str(device))
        if key not in cache:
            slices = self.head_slices
            feats = [self.feature(p.feature) for p in self.predicates]
            if all(
                f.kind == "continuous" and p.op in (">", ">=", "<", "<=")
                for p, f in zip(self.predicates, feats, strict=True)
            ):
                norms = [self.normalizers[f.name] for f in feats]
                columns = [
                    [slices[f.name].start for f in feats],
                    [n.std for n in norms],
                    [n.mean for n in norms],
                    [float(p.value) for p in self.predicates],
                    [f.tolerance for f in feats],
                    [1.0 if p.op in (">", ">=") else -1.0 for p in self.predicates],
                ]
                cache[key] = tuple(
                    torch.tensor(c, dtype=torch.long if i == 0 else torch.float32, device=device)
                    for i, c in enumerate(columns)
                )
            else:
                cache[key] = None
        return cache[key]

    def describe(self) -> str:
        """Human-readable one-line-per-feature summary."""
        lines = []
        for f in self.features:
            extra = f"tol {f.tolerance:g} {f.unit}".strip() if f.kind == "continuous" else ""
            if f.kind == "categorical" and f.categories is not None:
                extra = f"{len(f.categories)} categories"
            lines.append(f"  {f.name:<20} {f.kind:<12} {f.group:<10} w={f.weight:g} {extra}")
        for p in self.predicates:
            lines.append(f"  {p.name:<20} predicate    {p.group:<10} {p.feature} {p.op} {p.value}")
        return "\n".join(lines)


def _plain(cfg: Any) -> dict[str, Any]:
    """OmegaConf node or mapping -> plain dict."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def _present(col: np.ndarray) -> np.ndarray:
    """Boolean mask of rows holding a usable value (not None/NaN/inf).

    Vectorized for every dtype: numbers by ``isfinite``, numpy strings are always present, and
    object columns are compared elementwise (in C) with None, themselves (NaN != NaN) and +-inf.
    """
    kind = col.dtype.kind
    if kind in "fc":
        return np.isfinite(col)
    if kind in "iubUS":
        return np.ones(col.shape, dtype=bool)
    present = np.not_equal(col, None)
    present &= np.equal(col, col)
    present &= np.not_equal(col, np.inf)
    present &= np.not_equal(col, -np.inf)
    return present


def _is_unusable(col: np.ndarray) -> bool:
    """True if ``col`` holds no usable value or a single distinct one (objects compared as str)."""
    present = _present(col)
    if not present.all():
        if not present.any():
            return True
        col = col[present]
    if col.dtype.kind == "O":
        col = col.astype(str)
    return bool((col == col[0]).all())


PEEL_PASSES = 16  # distinct values found by masking before falling back to np.unique


def _distinct_str(col: np.ndarray) -> np.ndarray:
    """Sorted distinct values of ``col`` as str (``np.unique(col.astype(str))``).

    Categorical columns hold few distinct values, so each is found by one vectorized comparison
    pass (masking its rows out) -- several times faster than sorting or hashing every row; values
    left after PEEL_PASSES passes go to np.unique.
    """
    values = col if col.dtype.kind == "U" else col.astype(str)
    remaining = np.ones(len(values), dtype=bool)
    found: list[str] = []
    for _ in range(PEEL_PASSES):
        first = int(remaining.argmax()) if len(values) else 0
        if not len(values) or not remaining[first]:
            return np.unique(np.asarray(found, dtype=str))
        found.append(values[first])
        remaining &= values != values[first]
    rest = np.unique(values[remaining]) if remaining.any() else np.asarray([], dtype=str)
    return np.unique(np.concatenate([np.asarray(found, dtype=str), rest]))


def _category_index(col: np.ndarray, categories: tuple[str, ...] | None) -> np.ndarray:
    assert categories is not None
    vocab = np.asarray(categories, dtype=str)
    order = np.argsort(vocab)
    values = col if col.dtype.kind == "U" else col.astype(str)
    pos = np.searchsorted(vocab[order], values)
    return order[np.clip(pos, 0, len(vocab) - 1)].astype(np.float32)
