"""A model fitted on one database coding another: what it costs not to have seen the data.

For each shared database a lossless model (``model.context=history``) is trained on it exactly
as ``coder=fit`` does (``codec.model.fit_checkpoint``, ``--seconds`` of training, default 60),
and every database is then compressed with every model (``ckpt_path=``, the model embedded in
the file), decompressed and verified. Reported per coded database, bits per agent state: the
agent_states sections (features, keys, framing) and the embedded model, with the model fitted to
it and with the other one, their ratio (issue 20's goal: the unseen model at most 1.15x the
fitted one), and the default coder (adaptive: fits nothing, so it has no "unseen" case).

    nice -n 10 python benchmarks/cross_db.py [--seconds 60]

Prints a table and writes benchmarks/results/cross_db.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import new_results, write_results  # noqa: E402
from archive import section_bytes  # noqa: E402
from context_coder import REAL  # noqa: E402

from meaning_transform.codec.commands import compress, verify  # noqa: E402
from meaning_transform.codec.model import fit_checkpoint  # noqa: E402


def coded(db: Path, folder: Path, **kwargs: Any) -> dict[str, Any]:
    """``db`` compressed (and verified) with ``kwargs``: agent_states and model bits per
    state, or the one line ``compress`` refused it with."""
    out = folder / f"{db.stem}-{len(list(folder.iterdir()))}.mtc"
    try:
        stats = compress(str(db), str(out), **kwargs)
        verify(str(out), str(db))
    except ValueError as e:  # the codec's one-line refusals (ConfigError, DataError, ...)
        return {"refused": str(e)}
    sizes, n = section_bytes(out), stats["states"]
    return {
        "agent_states": 8 * sizes["agent_states"] / n,
        "model": 8 * sizes["(model)"] / n,
        "total": 8 * (sizes["agent_states"] + sizes["(model)"]) / n,
        "whole_file": 8 * out.stat().st_size / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training time per model")
    args = parser.parse_args()
    results = new_results(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoints = {}
        for name, db in REAL.items():
            print(f"fitting a model on {name} ({args.seconds:.0f} s) ...", flush=True)
            work = folder / f"fit-{name}"
            work.mkdir()
            checkpoints[name], _ = fit_checkpoint(str(db), args.seconds, str(work))
        files = folder / "files"
        files.mkdir()
        for name, db in REAL.items():
            row: dict[str, Any] = {"adaptive (default)": coded(db, files)}
            for fitted, ckpt in checkpoints.items():
                row[f"fitted on {fitted}"] = coded(db, files, ckpt_path=ckpt, embed_model=True)
            results["data"][name] = row
    print(table(results["data"]))
    write_results("cross_db", results)


def table(data: dict[str, Any]) -> str:
    """One row per coded database."""
    lines = [
        "bits per agent state: agent_states sections + embedded model (= total)",
        f"{'coded':<14}{'fitted on itself':>26}{'fitted on the other':>26}{'ratio':>8}"
        f"{'adaptive (no model)':>22}",
    ]
    for name, row in data.items():
        other = next(k for k in row if k.startswith("fitted on") and k != f"fitted on {name}")
        mine, theirs, adaptive = row[f"fitted on {name}"], row[other], row["adaptive (default)"]

        def cell(r: dict[str, Any]) -> str:
            if "refused" in r:
                return "refused"
            return f"{r['agent_states']:.2f} + {r['model']:.2f} = {r['total']:.2f}"

        ratio = (
            f"{theirs['total'] / mine['total']:.2f}"
            if "total" in mine and "total" in theirs
            else "-"
        )
        lines.append(f"{name:<14}{cell(mine):>26}{cell(theirs):>26}{ratio:>8}{cell(adaptive):>22}")
        for r in (mine, theirs):
            if "refused" in r:
                lines.append(f"  refused: {r['refused']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
