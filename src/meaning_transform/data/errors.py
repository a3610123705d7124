"""Errors of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Input data (file, table, column, filter or split) is unusable; the message says why."""
