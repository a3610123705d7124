"""JSON text columns as columns of their fields, byte-exact.

A JSON text is parsed and written back as a *template* -- the literal text around its scalar
values (braces, keys, separators, exactly as the writer spaced them) -- and the scalars
(null, true, false, integers, floats, strings). ``{"amount": 10, "before": 4.85}`` is the
template ``['{"amount": ', ', "before": ', '}']`` with the values 10 and 4.85. Rows that share a
template (in AgentFarm: one per ``action_type`` and outcome) have their values coded column by
column like any table column (``typed``), so a float field gets the float coder, a repeated id
the dictionary. A row is taken apart only if writing it back from its template and values gives
the same bytes (key order, spacing, number format, escapes); the others are kept as text. The
decoder does not parse anything: it joins the template with the values written as JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from meaning_transform.codec.block_io import Sink, Source
from meaning_transform.codec.context import Context

#: separators tried: Python's json.dumps default, and compact
STYLES = ((", ", ": "), (",", ":"))
MAX_TEMPLATES = 4096
MAX_FIELDS = 1024  # scalars in one template
MAX_FRAGMENT = 1 << 16
_SAMPLE = 64
_INT64 = (-(2**63), 2**63 - 1)
_SCALARS = {type(None), bool, int, float, str}


class _Pairs(list):
    """A JSON object as its (key, value) pairs, in the text's order, duplicates kept."""


def _parse(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_Pairs)


def scalar_text(v: Any, ascii_only: bool) -> str:
    """One scalar written as JSON, as Python's ``json.dumps`` writes it."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        if math.isfinite(v):
            return float.__repr__(v)
        return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    return json.dumps(v, ensure_ascii=ascii_only)


def _template(v: Any, seps: tuple[str, str], ascii_only: bool) -> tuple[list[str], list[Any]]:
    """(template fragments, scalars) of a parsed value."""
    item_sep, key_sep = seps
    frags: list[str] = []
    cur: list[str] = []
    values: list[Any] = []

    def walk(x: Any, depth: int) -> None:
        if depth > 64:
            raise ValueError("nested too deep")
        if type(x) is _Pairs:
            cur.append("{")
            for i, (k, y) in enumerate(x):
                if i:
                    cur.append(item_sep)
                cur.append(json.dumps(k, ensure_ascii=ascii_only))
                cur.append(key_sep)
                walk(y, depth + 1)
            cur.append("}")
        elif type(x) is list:
            cur.append("[")
            for i, y in enumerate(x):
                if i:
                    cur.append(item_sep)
                walk(y, depth + 1)
            cur.append("]")
        else:
            if type(x) is int and not _INT64[0] <= x <= _INT64[1]:
                raise ValueError("integer beyond 64 bits")
            if type(x) is str and not x.isascii():
                x.encode()  # UnicodeEncodeError (a ValueError) on a lone surrogate
            frags.append("".join(cur))
            cur.clear()
            values.append(x)

    walk(v, 0)
    frags.append("".join(cur))
    return frags, values


def _split(text: str, seps: tuple[str, str], ascii_only: bool) -> tuple[tuple[str, ...], list]:
    """(template, values) of ``text``, or ValueError if they would not give the same bytes."""
    if not text or text[0] not in "{[":
        raise ValueError("not a JSON object or array")
    frags, values = _template(_parse(text), seps, ascii_only)
    if len(values) > MAX_FIELDS or max(map(len, frags)) > MAX_FRAGMENT:
        raise ValueError("too large a template")
    if join(frags, [scalar_text(v, ascii_only) for v in values]) != text:
        raise ValueError("not written back byte for byte")
    return tuple(frags), values


def join(frags: Sequence[str], texts: Sequence[str]) -> str:
    """A template's fragments with the values' JSON texts between them."""
    out = [frags[0]]
    for t, f in zip(texts, frags[1:], strict=True):
        out.append(t)
        out.append(f)
    return "".join(out)


def _style(texts: Sequence[str]) -> tuple[tuple[str, str], bool, int]:
    """The style that writes back most of a sample of ``texts``, and how many it did."""
    sample = texts[:: max(1, len(texts) // _SAMPLE)][:_SAMPLE]
    best: tuple[tuple[str, str], bool, int] = (STYLES[0], True, -1)
    for seps in STYLES:
        for ascii_only in (True, False):
            ok = 0
            for t in sample:
                try:
                    _split(t, seps, ascii_only)
                    ok += 1
                except (ValueError, RecursionError):
                    pass
            if ok > best[2]:
                best = (seps, ascii_only, ok)
    return best


def looks_like_json(texts: Sequence[str]) -> bool:
    """Whether at least half of a sample of ``texts`` are JSON objects or arrays that write back
    exactly (a column is taken apart by content, not by its name)."""
    if not texts:
        return False
    return 2 * _style(texts)[2] >= min(len(texts), _SAMPLE)


PutField = Callable[[Sink, list, Context], Any]
TakeField = Callable[[Source, int, Context], list]


def put_json(
    sink: Sink,
    texts: Sequence[str],
    context: Context,
    put_field: PutField,
    put_texts: Callable[[Sink, list], None],
) -> None:
    """``texts`` as templates and field columns: ``put_field`` codes the template numbers and
    each field given ``context`` (the earlier columns of these rows; a field also sees the
    fields before it), ``put_texts`` the rows kept as text."""
    seps, ascii_only, _ = _style(texts)
    ids = [0] * len(texts)
    templates: dict[tuple[str, ...], int] = {}
    fields: list[list[list[Any]]] = []
    for i, t in enumerate(texts):
        try:
            frags, values = _split(t, seps, ascii_only)
        except (ValueError, RecursionError):
            continue
        k = templates.get(frags)
        if k is None:
            if len(templates) >= MAX_TEMPLATES:
                continue
            k = templates[frags] = len(templates)
            fields.append([[] for _ in values])
        ids[i] = k + 1
        for column, v in zip(fields[k], values, strict=True):
            column.append(v)
    sink.plan.uint(int(ascii_only))
    sink.plan.uint(len(templates))
    for frags in templates:
        sink.plan.uint(len(frags) - 1)
        for f in frags:
            sink.plan.text(f)
    put_field(sink, ids, context)
    numbers = np.array(ids, dtype=np.int64)
    put_texts(sink, [t for t, k in zip(texts, ids, strict=True) if k == 0])
    for k, columns in enumerate(fields, start=1):
        inner = context.subset(np.flatnonzero(numbers == k))
        for column in columns:
            inner.add(column, put_field(sink, column, inner))


def take_json(
    src: Source,
    n: int,
    context: Context,
    take_field: TakeField,
    take_texts: Callable[[Source, int], list],
) -> list[str]:
    """``n`` texts written by ``put_json`` with the same ``context``."""
    ascii_only = bool(src.plan.uint(1, "a JSON style"))
    templates = []
    for _ in range(src.plan.uint(MAX_TEMPLATES, "the number of JSON templates")):
        k = src.plan.uint(MAX_FIELDS, "the number of JSON fields")
        templates.append([src.plan.text(MAX_FRAGMENT, "a JSON template") for _ in range(k + 1)])
    ids = take_field(src, n, context)
    if not all(type(k) is int and 0 <= k <= len(templates) for k in ids):
        raise src.fail("a JSON template number is out of range")
    numbers = np.array(ids, dtype=np.int64)
    out: list[Any] = [None] * n
    fallback = np.flatnonzero(numbers == 0).tolist()
    for i, t in zip(fallback, take_texts(src, len(fallback)), strict=True):
        out[i] = t
    for k, frags in enumerate(templates, start=1):
        rows = np.flatnonzero(numbers == k)
        inner = context.subset(rows)
        columns = []
        for _ in frags[1:]:
            values = take_field(src, len(rows), inner)
            if not set(map(type, values)) <= _SCALARS:
                raise src.fail("a JSON field holds a value JSON cannot")
            inner.add(values)
            columns.append([scalar_text(v, ascii_only) for v in values])
        rows_texts = zip(*columns, strict=True) if columns else [()] * len(rows)
        for i, texts in zip(rows.tolist(), rows_texts, strict=True):
            out[i] = join(frags, texts)
    return out
