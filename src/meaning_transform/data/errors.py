"""Errors of the data layer (``DataError`` is defined with the other user errors)."""

from __future__ import annotations

from meaning_transform.errors import DataError

__all__ = ["DataError"]
