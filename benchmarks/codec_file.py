"""One round of the codec command on a database, and what its .mtc file spends on agent_states.

``round_trip`` compresses a database (the default coder, or ``ckpt_path=`` a trained model),
decompresses it (timed) and runs the codec's ``verify`` (every table, cell by cell; the coded
features within tolerance), then reads the file's bytes apart (``states_bytes``):

- ``features``: the coded feature streams of every agent_states chunk (latent and symbol words);
- ``sections``: the agent_states sections whole: features, keys and other columns, chunk meta and
  section framing (``archive.section_bytes``);
- ``header_share``: the header entries that are agent_states' own, zlib-compressed alone the way
  the file's header is: the model entry, the fitted schema, the context, the states description
  (columns, features, row order) and the SQL of agent_states and its indexes;
- ``file``: the whole .mtc file (every table, the whole header, the embedded model if any).
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from archive import section_bytes  # noqa: E402

from meaning_transform.codec import commands  # noqa: E402
from meaning_transform.codec.container import Reader  # noqa: E402

STATES = "agent_states"
#: header entries that describe agent_states alone (the rest: other tables, settings, framing)
STATE_ENTRIES = ("model", "schema", "context", "states")


def header_share(header: dict[str, Any]) -> int:
    """Bytes of agent_states' own header entries and SQL, compressed alone as the header is."""
    own = {key: header[key] for key in STATE_ENTRIES}
    own["objects"] = [o for o in header["objects"] if o.get("table") == STATES]
    return len(zlib.compress(json.dumps(own).encode(), 9))


def states_bytes(path: Path) -> dict[str, int]:
    """Bytes of the file at ``path`` spent on agent_states (see the module's docstring)."""
    with open(path, "rb") as fh:
        reader = Reader(fh, str(path))
        share = header_share(reader.header)
        features = sum(
            4 * (len(chunk.z_words) + len(chunk.x_words))
            for kind, chunk, _ in reader.sections()
            if kind == "states"
        )
    return {
        "features": features,
        "sections": section_bytes(path)[STATES],
        "header_share": share,
        "file": path.stat().st_size,
    }


def round_trip(db: Path, work: Path, name: str, ckpt_path: str | None = None) -> dict[str, Any]:
    """Compress ``db`` into ``work``, decompress and verify it; bytes per agent state, speeds."""
    out, restored = work / f"{name}.mtc", work / f"{name}.restored.db"
    c = commands.compress(str(db), str(out), ckpt_path=ckpt_path)
    d = commands.decompress(str(out), str(restored))
    v = commands.verify(str(out), str(db))
    restored.unlink()
    n = c["states"]
    sizes = states_bytes(out)
    res: dict[str, Any] = {"states": n, "bytes": sizes}
    res.update({f"{k}_bits_per_state": 8 * b / n for k, b in sizes.items()})
    res["with_header_share_bits_per_state"] = 8 * (sizes["sections"] + sizes["header_share"]) / n
    res.update(
        model=c["model"],
        estimated_bits_per_state=c["estimated_bits"] / n,
        compress_seconds=c["seconds"],
        decompress_seconds=d["seconds"],
        compress_states_per_s=n / c["seconds"],
        decompress_states_per_s=d["states"] / d["seconds"],
        verified_states=v["states"],
        verified_tables=len(v["rows"]),
        verified_rows=sum(v["rows"].values()),
    )
    return res
