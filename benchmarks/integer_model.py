"""The integer coding model against the float model it is exported from, side by side.

For each shared database a lossless model with ``model.context=history`` is trained on the
training agents (as ``benchmarks/codec.py`` does), and its **test agents** (held out) are
coded as one chunk:

- ``float``: the float model's own estimate (``-log2`` of its likelihoods: the latent under the
  bottleneck, the grid symbols under ``log_probs``), and the float coding path as it was before
  the integer model (commit ``--float-ref``, extracted with ``git archive`` and run in a
  subprocess: float32 probabilities, ``deterministic_threads``): real coded bits and speed;
- ``int<b>/<h>/<f>``: the integer model exported with ``b``-bit weights in the hidden layers,
  ``h``-bit in the delta head and ``f``-bit in the absolute head (``integer_export.WeightBits``;
  with context the absolute head codes only each agent's first state) and the integer encoder: estimated and real coded bits, the serialized model's bytes
  (what a file carries) and bytes per stored parameter, encode (latents included) and decode
  speed; ``total`` is the model and the streams together, as a self-contained file of the test
  agents would carry them.

Speeds are the best of ``--repeats`` runs of coding the chunk (states/s, one torch thread);
the machine is a shared 2-core one.

    python benchmarks/integer_model.py                   # both shared dbs, 40 epochs
    python benchmarks/integer_model.py --epochs 5 --bits 8/8/8 8/5/2
    python benchmarks/integer_model.py --checkpoint run1=outputs/.../best.ckpt --data run1

Prints a table and writes benchmarks/results/integer_model.json.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import new_results, write_results  # noqa: E402
from codec import REAL, train  # noqa: E402

from meaning_transform.api import load_config  # noqa: E402
from meaning_transform.codec.chunks import decode_chunk, encode_chunk, float_bits  # noqa: E402
from meaning_transform.codec.model import build_model, read_model  # noqa: E402
from meaning_transform.config import instantiate_checked  # noqa: E402
from meaning_transform.data.context import has_previous  # noqa: E402
from meaning_transform.models.integer_export import (  # noqa: E402
    WeightBits,
    export,
    export_encoder,
)

ROOT = Path(__file__).resolve().parents[1]
#: the last commit whose codec coded with float32 probabilities
FLOAT_REF = "ed7007f"

FLOAT_CODER = """
import json, sys, time
import numpy as np, torch
from meaning_transform.codec.chunks import decode_chunk, deterministic_threads, encode_chunk
from meaning_transform.codec.model import load_model
torch.set_num_threads(1)
ckpt, work, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
module = load_model(ckpt)
symbols, flag = np.load(work + "/symbols.npy"), np.load(work + "/flag.npy")
enc = dec = float("inf")
with deterministic_threads():
    for _ in range(repeats):
        t = time.perf_counter()
        chunk = encode_chunk(module, symbols, flag)
        enc = min(enc, time.perf_counter() - t)
        t = time.perf_counter()
        decoded = decode_chunk(module, chunk.z_words, chunk.x_words, flag)
        dec = min(dec, time.perf_counter() - t)
print(json.dumps({"bytes": chunk.num_bytes, "estimated_bits": chunk.estimated_bits,
                  "encode_s": enc, "decode_s": dec, "exact": bool((decoded == symbols).all())}))
"""


def float_reference_source(commit: str, work: Path) -> Path:
    """The package source at ``commit`` (the float coding path), extracted under ``work``."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "src"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(work / "float_ref", filter="data")
    return work / "float_ref" / "src"


def integer_run(module: Any, symbols: np.ndarray, flag: np.ndarray, bits: str, repeats: int):
    """Export with ``bits`` ("body/head/first state") and code the chunk: sizes, bits, speeds."""
    weight_bits = WeightBits(*(int(b) for b in bits.split("/")))
    model = export(module.codec, module.bottleneck, weight_bits)
    encoder = export_encoder(module.codec, module.bottleneck)
    enc = dec = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        chunk = encode_chunk(model, symbols, flag, encoder.offsets(symbols, flag))
        enc = min(enc, time.perf_counter() - t)
        t = time.perf_counter()
        decoded = decode_chunk(model, chunk.z_words, chunk.x_words, flag)
        dec = min(dec, time.perf_counter() - t)
    n, blob = len(symbols), model.to_bytes()
    return {
        "weight_bits": weight_bits._asdict(),
        "model_bytes": len(blob),
        "total_bytes": len(blob) + chunk.num_bytes,
        "parameters": model.num_parameters,
        "bytes_per_parameter": len(blob) / model.num_parameters,
        "estimated_bits_per_state": chunk.estimated_bits / n,
        "coded_bits_per_state": 8 * chunk.num_bytes / n,
        "encode_states_per_s": n / enc,
        "decode_states_per_s": n / dec,
        "exact": bool(np.array_equal(decoded, symbols)),
    }


def float_run(ckpt: str, work: Path, src: Path, n: int, repeats: int) -> dict[str, Any]:
    """The float coding path of ``--float-ref`` on the saved chunk, in a subprocess."""
    r = subprocess.run(
        [sys.executable, "-c", FLOAT_CODER, ckpt, str(work), str(repeats)],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {
        "estimated_bits_per_state": out["estimated_bits"] / n,
        "coded_bits_per_state": 8 * out["bytes"] / n,
        "encode_states_per_s": n / out["encode_s"],
        "decode_states_per_s": n / out["decode_s"],
        "exact": out["exact"],
    }


def bench(name: str, db: Path, args: argparse.Namespace, work: Path, src: Path) -> dict:
    """Every row of one database."""
    t = time.perf_counter()
    ckpt = args.checkpoint.get(name)
    summary = {}
    if ckpt is None:
        summary = train(db, "history", args.epochs, args.batch_size, work / f"{name}_run")
        ckpt = summary["best_model_path"]
    cfg = load_config(["data=sqlite", f"data.path={db}"])
    dm = instantiate_checked(cfg.data, "data", schema=cfg.schema)
    dm.setup()
    module = build_model(read_model(ckpt)[0], ckpt)
    symbols = module.codec.symbols(dm.test_x)
    flag = has_previous(dm.test_agents)
    chunk_dir = work / name
    chunk_dir.mkdir()
    np.save(chunk_dir / "symbols.npy", symbols), np.save(chunk_dir / "flag.npy", flag)
    n = len(symbols)
    res: dict[str, Any] = {
        "test_states": n,
        "train_seconds": time.perf_counter() - t,
        "epochs": summary.get("epochs_run", summary.get("best_epoch")),
        "float_model_estimate_bits_per_state": float_bits(module, symbols, flag) / n,
        "float": float_run(ckpt, chunk_dir, src, n, args.repeats),
    }
    for bits in args.bits:
        res[f"int{bits}"] = integer_run(module, symbols, flag, bits, args.repeats)
    return res


def table(results: dict[str, Any], bits: list[str]) -> str:
    """The printed table."""
    lines = [
        "test agents of each db as one chunk; bits/state (estimate, coded: 32-bit words, so "
        "steps of 32 bits per chunk); model bytes (bytes per parameter); total: model + "
        "streams; states/s (encode / decode)",
        f"{'db':<12} {'path':<10} {'estimate':>9} {'vs float':>8} {'coded':>7} {'vs float':>8} "
        f"{'model bytes':>15} {'total':>7} {'encode/s':>9} {'decode/s':>9}",
    ]
    for name, r in results["data"].items():
        f = r["float"]
        ref, own = f["coded_bits_per_state"], r["float_model_estimate_bits_per_state"]
        lines.append(
            f"{name:<12} {'float':<10} {f['estimated_bits_per_state']:>9.4f} {'':>8} "
            f"{ref:>7.4f} {'':>8} {'':>15} {'':>7} {f['encode_states_per_s']:>9,.0f} "
            f"{f['decode_states_per_s']:>9,.0f}"
        )
        for b in bits:
            i = r[f"int{b}"]
            size = f"{i['model_bytes']:,} ({i['bytes_per_parameter']:.2f})"
            lines.append(
                f"{'':<12} {'int' + b:<10} {i['estimated_bits_per_state']:>9.4f} "
                f"{100 * (i['estimated_bits_per_state'] / own - 1):>+7.2f}% "
                f"{i['coded_bits_per_state']:>7.4f} "
                f"{100 * (i['coded_bits_per_state'] / ref - 1):>+7.2f}% {size:>15} "
                f"{i['total_bytes']:>7,} {i['encode_states_per_s']:>9,.0f} "
                f"{i['decode_states_per_s']:>9,.0f}"
            )
        lines.append(
            f"{'':<12} float model's own estimate {r['float_model_estimate_bits_per_state']:.4f} "
            f"bits/state; {r['test_states']:,} states; every path exact: "
            f"{all(r[k]['exact'] for k in ['float', *(f'int{b}' for b in bits)])}"
        )
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=list(REAL))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--bits",
        nargs="+",
        default=["12/12/12", "8/8/8", "8/6/2", "8/5/2", "8/4/2", "6/5/2", "5/5/2", "4/4/2"],
        help="body/head/first-state bits",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--float-ref", default=FLOAT_REF)
    p.add_argument("--out", default="integer_model")
    p.add_argument(
        "--checkpoint",
        nargs="*",
        default=[],
        help="db=path: code with this history model instead of training one",
    )
    args = p.parse_args()
    args.checkpoint = dict(item.split("=", 1) for item in args.checkpoint)
    logging.getLogger("meaning_transform").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    results = new_results(args)
    found = {name: REAL[name] for name in args.data if REAL[name].exists()}
    for name in sorted(set(args.data) - set(found)):
        print(f"skipping {name}: {REAL[name]} not found")
    with tempfile.TemporaryDirectory() as tmp:
        src = float_reference_source(args.float_ref, Path(tmp))
        for name, db in found.items():
            print(f"{name}: training and coding ...", flush=True)
            results["data"][name] = bench(name, db, args, Path(tmp), src)
    print(table(results, args.bits))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
