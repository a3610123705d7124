"""Helpers that keep user-facing error messages to one readable line."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def one_line(error: BaseException | str) -> str:
    """The first line of an error's message (its type name when the message is empty)."""
    text = str(error).strip()
    if not text:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    return text.splitlines()[0]


def few(items: Iterable[Any], limit: int = 10, sep: str = ", ") -> str:
    """The first ``limit`` items joined by ``sep``, then "... and N more" for the rest."""
    items = list(items)
    shown = sep.join(str(i) for i in items[:limit])
    rest = len(items) - limit
    return f"{shown}{sep}... and {rest} more" if rest > 0 else shown
