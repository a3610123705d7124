"""JSON text columns as columns of their fields, byte-exact.

A JSON text is cut into a *template* -- the literal text around its scalar values (braces,
keys, separators and spacing exactly as the writer wrote them) -- and the scalars (null, true,
false, integers, floats, strings). ``{"amount": 10, "before": 4.85}`` is the template
``['{"amount": ', ', "before": ', '}']`` with the values 10 and 4.85. Rows that share a
template (in AgentFarm: one per ``action_type`` and outcome) have their values coded column by
column like any table column, so a float field gets the float coder, a repeated id the
dictionary, a field another field or column predicts nearly nothing. A scalar is taken out only
if writing it back as JSON (``scalar_text``: Python's ``json.dumps``) gives its exact text;
one that would not (``1e-7``, ``2.50``, an integer beyond 64 bits, another escaping) stays in
the template as text. So every row comes back byte for byte, whatever its spacing or key
order, and the decoder parses nothing: it joins the template with the values written as JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from meaning_transform.codec.block_io import Sink, Source
from meaning_transform.codec.context import Context

MAX_TEMPLATES = 4096
MAX_FIELDS = 1024  # scalars in one template
MAX_FRAGMENT = 1 << 16
_SAMPLE = 64
_MIN_ROWS = 8  # fewer rows share no templates worth their fields' overhead
_INT64 = (-(2**63), 2**63 - 1)
_SCALARS = {type(None), bool, int, float, str}
#: a string (a key when a colon follows), a number, or a literal
_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"(\s*:)?|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?'
    r"|true|false|null"
)
_LITERALS = {"true": True, "false": False, "null": None}


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


def _scalar(token: str, ascii_only: bool) -> tuple[bool, Any]:
    """(whether ``token`` is written back exactly, its value)."""
    first = token[0]
    if first == '"':
        try:
            v = json.loads(token)
            v.encode()  # a lone surrogate is not text SQLite can hold
        except ValueError:
            return False, None
    elif first in "tfn":
        return True, _LITERALS[token]
    elif "." in token or "e" in token or "E" in token:
        v = float(token)
    else:
        v = int(token)
        if not _INT64[0] <= v <= _INT64[1]:
            return False, None
    return scalar_text(v, ascii_only) == token, v


def split(
    text: str, ascii_only: bool, seen: dict[str, tuple[bool, Any]] | None = None
) -> tuple[tuple[str, ...], list[Any]]:
    """(template, values) of ``text``: joining them gives ``text`` back (``seen``: tokens
    already read, a cache)."""
    seen = {} if seen is None else seen
    frags, values, start = [], [], 0
    for m in _TOKEN.finditer(text):
        if m.group(1) is not None:
            continue  # a key: part of the template
        token = m.group(0)
        known = seen.get(token)
        if known is None:
            known = seen[token] = _scalar(token, ascii_only)
        ok, v = known
        if ok and len(values) < MAX_FIELDS:
            frags.append(text[start : m.start()])
            values.append(v)
            start = m.end()
    frags.append(text[start:])
    return tuple(frags), values


def join(frags: Sequence[str], texts: Sequence[str]) -> str:
    """A template's fragments with the values' JSON texts between them."""
    out = [frags[0]]
    for t, f in zip(texts, frags[1:], strict=True):
        out.append(t)
        out.append(f)
    return "".join(out)


def looks_like_json(texts: Sequence[str]) -> bool:
    """Whether there are rows enough to share templates and at least half of a sample of
    ``texts`` are JSON objects or arrays (a column is taken apart by its content, not by its
    name)."""
    sample = texts[:: max(1, len(texts) // _SAMPLE)][:_SAMPLE]
    return len(texts) >= _MIN_ROWS and 2 * sum(t[:1] in ("{", "[") for t in sample) >= len(sample)


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
    sample = texts[:: max(1, len(texts) // _SAMPLE)][:_SAMPLE]
    ascii_only = all(t.isascii() for t in sample)
    ids = [0] * len(texts)
    templates: dict[tuple[str, ...], int] = {}
    fields: list[list[list[Any]]] = []
    tokens: dict[str, tuple[bool, Any]] = {}
    splits: dict[str, tuple[tuple[str, ...], list[Any]]] = {}  # repeated texts: split once
    for i, t in enumerate(texts):
        cached = splits.get(t)
        if cached is None:
            cached = splits[t] = split(t, ascii_only, tokens)
        frags, values = cached
        if not values or max(map(len, frags)) > MAX_FRAGMENT:
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
        src.spend(len(rows) * sum(map(len, frags)))
        inner = context.subset(rows)
        columns = []
        for _ in frags[1:]:
            values = take_field(src, len(rows), inner)
            if not set(map(type, values)) <= _SCALARS:
                raise src.fail("a JSON field holds a value JSON cannot")
            factors = inner.add(values)
            texts = [scalar_text(v, ascii_only) for v in factors.firsts]  # each value once
            src.spend(int(np.array([len(t) for t in texts], dtype=np.int64)[factors.codes].sum()))
            columns.append([texts[c] for c in factors.codes.tolist()])
        rows_texts = zip(*columns, strict=True) if columns else [()] * len(rows)
        for i, texts in zip(rows.tolist(), rows_texts, strict=True):
            out[i] = join(frags, texts)
    return out
