"""The feature schema, split by job.

- ``declaration``: what an agent state is and means (features, predicates, layouts as indices);
- ``table``: fitting a schema to a numpy table, checking, encoding and decoding tables;
- ``layout``: the torch side (encoder input, decoder heads, native units, predicates).
"""

from meaning_transform.errors import SchemaError
from meaning_transform.schema.declaration import (
    INVALID_VALUES,
    KINDS,
    MAX_MAGNITUDE,
    Feature,
    FeatureSchema,
    Normalizer,
    Predicate,
    Table,
)

__all__ = [
    "INVALID_VALUES",
    "KINDS",
    "MAX_MAGNITUDE",
    "Feature",
    "FeatureSchema",
    "Normalizer",
    "Predicate",
    "SchemaError",
    "Table",
]
