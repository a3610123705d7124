"""User-facing errors: each is reported as one line, before any work starts, with nothing written."""

from __future__ import annotations

from meaning_transform.data.errors import DataError
from meaning_transform.schema import SchemaError


class ConfigError(ValueError):
    """A config value is invalid: the message names the key, the value and what is allowed."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the configured model."""


#: errors caused by the user's input (reported as one line, exit code 2)
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, CheckpointError, DataError, SchemaError)
