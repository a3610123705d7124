"""Bits per agent state of the adaptive context coder (``codec/context_coder.py``) on the
shared databases, with each row context the other tables offer, beside the integer model.

Every database is read by the codec's own reading code (``coding_rows``, the schema fitted to
the database, the meaning grid), as one chunk; each variant is encoded and decoded by the
codec's chunk coder (``adaptive.AdaptiveCoder``), checked equal, and timed. Rows:

- adaptive alone (no row context);
- + the action of the same (agent, step) (``agent_actions.action_type``);
- + the action of the step before; + both;
- + the health incidents of the same (agent, step) (``health_incidents.cause``), with the action;
- + agents' first states guessed from ``agents`` (birth position), with both;
- states guessed from the values of agent_actions and health_incidents that spell them out
  (``state_hints``), alone and with all of the above (the codec's default).

Each database is then compressed whole with the codec's default (``coder=adaptive``) and the
agent_states sections (features, keys, framing) and header are read off the file; ``--model``
does the same with the integer model fitted to the database (``coder=fit``, 60 s of training),
whose embedded bytes count too.

    python benchmarks/context_coder.py [--model]

Prints a table and writes benchmarks/results/context_coder.json.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import new_results, write_results  # noqa: E402

from meaning_transform.codec.adaptive import (  # noqa: E402
    AdaptiveCoder,
    anchor_columns,
    fitted_schema,
)
from meaning_transform.codec.source import feature_table, layout_of  # noqa: E402
from meaning_transform.codec.state_context import (  # noqa: E402
    ACTIONS,
    INCIDENTS,
    PREVIOUS_ACTIONS,
    has_source,
)
from meaning_transform.codec.state_hints import find_hints  # noqa: E402
from meaning_transform.codec.states import coding_rows, same_agent  # noqa: E402
from meaning_transform.grid import MeaningGrid  # noqa: E402
from meaning_transform.schema.table import encode  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = {"run1": SHARED / "agentfarm_run1.db", "run3_moving": SHARED / "agentfarm_run3_moving.db"}
#: row contexts, whether agents' first states are guessed from ``agents`` (birth position), and
#: whether states are guessed from the values other tables hold (state_hints)
VARIANTS = {
    "adaptive alone": ((), False, False),
    "+ action (same step)": ((ACTIONS,), False, False),
    "+ action (step before)": ((PREVIOUS_ACTIONS,), False, False),
    "+ action (same step and step before)": ((ACTIONS, PREVIOUS_ACTIONS), False, False),
    "+ action + health incidents (same step)": ((ACTIONS, INCIDENTS), False, False),
    "+ action + incidents + first states from agents": ((ACTIONS, INCIDENTS), True, False),
    "adaptive + states guessed from other tables only": ((), False, True),
    "+ action + incidents + agents + guesses (default)": ((ACTIONS, INCIDENTS), True, True),
}


def states_of(db: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any], Any, list[str]]:
    """(grid symbols [n, F], same-agent flags, the rows, the schema, the features coded from
    agent_states)."""
    schema = fitted_schema(db)
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        layout = layout_of(con, str(db), schema)
        with closing(coding_rows(con, layout, "none", 1 << 22)) as chunks:
            rows = next(chunks)
    table, _ = feature_table(schema, rows)
    symbols = MeaningGrid(schema, 1).encode(encode(schema, table))
    return symbols, same_agent(rows["agent_id"]), rows, schema, layout.features


def variant(
    db: Path, symbols: np.ndarray, flag: np.ndarray, rows: dict[str, Any], schema: Any,
    coded: list[str], sources: tuple, first: bool, guessed: bool,
) -> dict[str, Any] | None:  # fmt: skip
    """One row of the table: bits per state and seconds (the codec's own chunk coder), or
    None if a source is missing."""
    start = time.perf_counter()
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        if not all(has_source(con, s) for s in sources):
            return None
        anchors = anchor_columns(con, schema, coded, {}) if first else ()
        continuous = [f.name for f in schema.of_kind("continuous") if f.name in coded]
        hints = find_hints(con, MeaningGrid(schema, 1), continuous) if guessed else ()
        coder = AdaptiveCoder.reading(schema, con, sources, anchors, hints)
    read = time.perf_counter() - start
    start = time.perf_counter()
    z_words, words, estimated = coder.encode(symbols, flag, rows)
    encoded = time.perf_counter() - start
    ranges = np.stack([symbols.min(axis=0), symbols.max(axis=0)], axis=1).tolist()
    start = time.perf_counter()
    decoded = coder.decode(z_words, words, flag, rows, ranges)
    decoded_s = time.perf_counter() - start
    if not np.array_equal(decoded, symbols):
        raise RuntimeError(f"{db.name}: {sources} does not decode to the coded symbols")
    n = len(symbols)
    return {
        "bits_per_state": 32 * len(words) / n,
        "estimated_bits_per_state": estimated / n,
        "anchors": list(anchors),
        "hints": [h.entry() for h in hints],
        "read_context_s": read,
        "encode_s": encoded,
        "decode_s": decoded_s,
    }


def codec_row(db: Path, model: str) -> dict[str, Any]:
    """The whole database compressed with ``model`` (``adaptive``: the default; ``fit``: the
    integer model fitted to it): its agent_states sections (features, keys and other columns,
    framing), the header and the embedded model, per state; compress and decompress seconds."""
    from archive import section_bytes

    from meaning_transform.codec.commands import compress, decompress

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "f.mtc"
        stats = compress(str(db), str(out), coder=model)
        sizes = section_bytes(out)
        restored = decompress(str(out), str(Path(folder) / "r.db"))
    n = stats["states"]
    return {
        "agent_states_bits_per_state": 8 * sizes["agent_states"] / n,
        "header_bits_per_state": 8 * sizes["(header)"] / n,
        "model_bits_per_state": 8 * sizes["(model)"] / n,
        "compress_s": stats["seconds"],
        "decompress_s": restored["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="store_true", help="also compress with coder=fit")
    parser.add_argument("--data", nargs="+", default=list(REAL), choices=list(REAL))
    args = parser.parse_args()
    results = new_results(args)
    for name in args.data:
        db = REAL[name]
        symbols, flag, rows, schema, coded = states_of(db)
        entry: dict[str, Any] = {"states": len(symbols), "features": symbols.shape[1]}
        for label, (sources, first, guessed) in VARIANTS.items():
            entry[label] = variant(db, symbols, flag, rows, schema, coded, sources, first, guessed)
        for model in ("adaptive", *(["fit"] if args.model else [])):
            entry[f"codec, coder={model}"] = codec_row(db, model)
        results["data"][name] = entry
    print(table(results["data"]))
    write_results("context_coder", results)


_W = max(map(len, VARIANTS)) + 2  # the label column


def table(data: dict[str, Any]) -> str:
    """The printed table: a row per variant, a column per database."""
    names = list(data)
    lines = [f"{'bits per state (features only)':<{_W}}" + "".join(f"{n:>22}" for n in names)]
    for label in VARIANTS:
        cells = []
        for n in names:
            r = data[n][label]
            cells.append(
                f"{'(no table)':>22}" if r is None
                else f"{r['bits_per_state']:>7.3f} ({r['encode_s']:.1f}/{r['decode_s']:.1f} s)"
                .rjust(22)
            )  # fmt: skip
        lines.append(f"{label:<{_W}}" + "".join(cells))
    for model in ("adaptive", "fit"):
        if not all(f"codec, coder={model}" in data[n] for n in names):
            continue
        m = [data[n][f"codec, coder={model}"] for n in names]
        lines.append(f"the whole-database codec, coder={model}:")
        for key, label in (
            ("agent_states_bits_per_state", "  agent_states sections (features + keys)"),
            ("header_bits_per_state", "  header (schema, SQL, settings)"),
            ("model_bits_per_state", "  model in the file"),
        ):
            lines.append(f"{label:<{_W}}" + "".join(f"{r[key]:>22.3f}" for r in m))
        lines.append(
            f"{'  compress / decompress seconds':<{_W}}"
            + "".join(f"{r['compress_s']:>14.1f} / {r['decompress_s']:<5.1f}" for r in m)
        )
    lines.append("(encode/decode seconds in brackets; every variant decoded exactly)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
