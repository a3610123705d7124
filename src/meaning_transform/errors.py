"""User-facing errors: each is reported as one line, before any work starts, with nothing written.

Defined here, with no heavy imports, so the entry points can check their input before importing
torch or Lightning; ``schema.SchemaError`` and ``data.DataError`` are these classes.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is invalid: the message names the key, the value and what is allowed."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe or does not fit the configured model."""


class SchemaError(ValueError):
    """A schema declaration, or a table checked against a schema, is invalid."""


class DataError(ValueError):
    """Input data (file, table, column, filter or split) is unusable; the message says why."""


#: errors caused by the user's input (reported as one line, exit code 2)
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, CheckpointError, DataError, SchemaError)
