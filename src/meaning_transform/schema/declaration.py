"""The schema's declaration: what an agent state is (features) and what it means (predicates).

A schema lists features (column, kind, unit, tolerance, group, weight) and predicates (simple
comparisons on one feature). Everything else -- the data tensor layout, the decoder heads, the
losses, the drift metrics and the plots -- is derived from it; no tensor index is written by hand
anywhere else. Fitting it to a table and coding tables live in ``schema.table`` (numpy); its
torch-side layout (encoder input, heads, soft predicates) in ``schema.layout``.

Data tensor layout ("codes" of the data layer): one float32 column per feature, in schema order:
continuous -> standardized value ``(x - mean) / std``; binary -> 0.0 / 1.0; categorical -> the
category's index in the vocabulary. Decoder head layout: one column per continuous feature, one
logit per binary feature, one logit per category of each categorical feature.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from meaning_transform.containers import to_plain
from meaning_transform.errors import SchemaError

Table = dict[str, np.ndarray]
#: the largest usable magnitude: the model computes in float32 and squares values (variance,
#: squared errors), so anything above sqrt(float32 max) ~ 1.8e19 would overflow to inf
MAX_MAGNITUDE = float(np.sqrt(np.finfo(np.float32).max))
#: what an invalid value is, as error messages say it
INVALID_VALUES = f"NULL/NaN/inf or out-of-range (|x| > {MAX_MAGNITUDE:.2g}, or outside min/max)"
KINDS = ("continuous", "binary", "categorical")
SOURCES = ("agent_states", "agents")
OPS = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def _check_types(what: str, **fields: tuple[Any, Any]) -> None:
    """SchemaError naming the first field whose value is not of its type (``float``: any finite
    number; a schema read from a file is checked this way before anything uses it)."""
    for name, (value, kind) in fields.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and not np.isfinite(value):
            raise SchemaError(f"{what}: {name} must be finite, got {value}")
        accepted = kind | int if float in getattr(kind, "__args__", (kind,)) else kind
        if isinstance(value, bool) and kind is not bool or not isinstance(value, accepted):
            raise SchemaError(f"{what}: {name} {value!r:.40} is not of type {kind}")


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
        _check_types(
            f"feature {self.name!r}",
            name=(self.name, str),
            unit=(self.unit, str),
            group=(self.group, str),
            tolerance=(self.tolerance, float),
            weight=(self.weight, float),
            optional=(self.optional, bool),
            min=(self.min, float | None),
            max=(self.max, float | None),
        )
        if self.categories is not None and not all(isinstance(c, str) for c in self.categories):
            raise SchemaError(f"feature {self.name!r}: categories must be strings")
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
        _check_types(
            f"predicate {self.name!r}",
            name=(self.name, str),
            feature=(self.feature, str),
            group=(self.group, str),
            value=(self.value, float | str),
            weight=(self.weight, float),
        )
        if self.op not in OPS:
            raise SchemaError(f"predicate {self.name!r}: op {self.op!r} is not one of {tuple(OPS)}")
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

    def __post_init__(self) -> None:
        _check_types("normalizer", mean=(self.mean, float), std=(self.std, float))
        if not self.std > 0 or self.lattice not in (0, 1):
            raise SchemaError(f"normalizer std {self.std} must be > 0 and lattice 0 or 1")


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
        cfg = to_plain(cfg)
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
        self.require_fitted()
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

    @property
    def total_feature_weight(self) -> float:
        """Sum of feature weights."""
        return float(sum(f.weight for f in self.features))

    @property
    def input_dim(self) -> int:
        """Width of the encoder input (categoricals one-hot)."""
        return self.head_dim

    def require_fitted(self) -> None:
        """Raise SchemaError unless normalization and vocabularies have been fitted."""
        if not self.fitted:
            raise SchemaError("schema is not fitted yet; fit it to a training table first")

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
