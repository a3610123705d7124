"""Portable coding: the integer coding model's numbers by hand, and files that decode anywhere.

The end-to-end check (issue 19, item 2): a tiny ``model.context=history`` model, exported once
to its integer model and encoder; a chunk is written in two subprocesses, under torch's
default kernels and under ``ATEN_CPU_CAPABILITY=default``, and each file is decoded in
subprocesses under ``default`` (also with numpy's SIMD dispatch and OpenBLAS's kernels pinned
to their baseline), ``avx2`` and ``avx512``, with 1 and 2 torch threads: the two writers must
give the same bytes and every decode the original symbols.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import constriction
import numpy as np
import pytest
from codec_helpers import train_lossless
from conftest import REPO, TINY

from meaning_transform.models import integer_format
from meaning_transform.models.fixed_point import (
    PRECISION,
    code_lengths,
    cosine_table,
    exp2_table,
    frequencies,
)
from meaning_transform.models.integer_format import IntegerModelError
from meaning_transform.models.integer_model import IntegerModel


# ---------------------------------------------------------------- fixed point, by hand
def test_exp2_table_is_two_to_the_minus_fraction() -> None:
    t = exp2_table()
    assert len(t) == 1024 and t[0] == 2**30
    assert t[512] == 759250125  # 2**30 / sqrt(2) = 759250124.99...
    assert t[256] == 902905651  # 2**30 * 2**-0.25 = 902905650.71...
    f = np.arange(1024)
    assert np.abs(t - np.round(2.0**30 * 2.0 ** (-f / 1024))).max() == 0


def test_integer_softmax_with_a_floor_by_hand() -> None:
    # logits of 0, -1, -2 and 0 bits: exp table entries 2**30, 2**29, 2**28, 2**30, total
    # 2.75 * 2**30; the free weight 2**24 - 4 * 4 = 16777200 splits as 1 : 0.5 : 0.25 : 1
    q = frequencies(np.array([[0, -1024, -2048, 0]]), floor=4)
    assert q.tolist() == [[6100800 + 3, 3050400 + 3, 1525200 + 3, 6100800 + 3]]
    assert q.sum() == 2**24 - 4  # constriction adds 1 per bin: exactly 2**24
    # a far-below logit gets the floor alone: frequency 4, 22 bits
    q = frequencies(np.array([[0, -(1 << 20)]]), floor=4)
    assert q.tolist() == [[2**24 - 2 - 3, 3]] and code_lengths(q, np.array([1])) == [22.0]
    # a padded row (2 real bins of 3): the pad gets weight 0 (frequency 1), the real bins share
    # 2**24 - 3 - 2 * 3 = 16777207 past their floors, its odd unit on the first maximum
    q = frequencies(np.array([[[0, 0, -(1 << 40)]]]), floor=4, sizes=np.array([2]))
    assert q.tolist() == [[[8388604 + 3, 8388603 + 3, 0]]] and q.sum() == 2**24 - 3


def test_weights_sum_exactly_whatever_the_batch_and_layout() -> None:
    """Every row sums to 2**24 - N (what constriction keeps as it is), and a row's weights do
    not depend on the rows beside it: a gathered, non-contiguous batch of 600 rows gives the
    same integers as each row alone (encoder and decoder batch rows differently)."""
    rng = np.random.default_rng(0)
    flat = rng.integers(-(1 << 14), 1 << 14, size=(600, 40))
    index = rng.integers(0, 40, size=(9, 14))
    logits = flat[:, index]  # [600, 9, 14], as a head gathers its features' logits
    sizes = rng.integers(2, 15, size=9)
    logits = np.where(np.arange(14) < sizes[:, None], logits, -(1 << 30))
    q = frequencies(logits, 4, sizes)
    assert (q.sum(-1) == 2**24 - 14).all() and (q >= 0).all()
    for row in (0, 299, 599):
        assert np.array_equal(frequencies(logits[row : row + 1], 4, sizes)[0], q[row])


def test_cosine_table_by_hand() -> None:
    c = 16384 * math.cos(math.pi / 4)  # 11585.24
    assert cosine_table(2, 2).tolist() == [[16384, 0], [0, 16384]]  # every bin: identity
    assert cosine_table(4, 2).tolist() == [
        [16384] * 4,
        [15137, 6270, -6270, -15137],  # 16384 cos(pi/8), 16384 cos(3pi/8)
    ]
    assert cosine_table(4, 3)[2, 0] == round(c)  # k = 2, i = 0: cos(pi / 4)


def test_constriction_codes_integer_weights_exactly() -> None:
    """Weights q summing to 2**24 - N are coded with frequencies q + 1: 2,000 symbols of
    weight 3 cost 22 bits each (with q as the frequency they would cost 22.415)."""
    q = np.tile(np.array([[2**24 - 2 - 3, 3]], dtype=np.float32), (2000, 1))
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.ones(2000, dtype=np.int32), constriction.stream.model.Categorical(
        perfect=False), q)  # fmt: skip
    bits = 32 * len(coder.get_compressed())
    assert abs(bits - 2000 * (PRECISION - 2)) <= 64  # the ANS state: at most two words


# ---------------------------------------------------------------- serialization
def _crafted(*fields: tuple[str, int]) -> bytes:
    """Model bytes whose body holds ``fields`` (("uint", v) or ("array", count) headers)."""
    w = integer_format._Writer()
    for kind, value in fields:
        if kind == "uint":
            w.uint(value)
        else:  # an array header claiming ``value`` one-byte integers, none of them present
            w.uint(0), w.uint(value)
    return w.pack(integer_format.MAGIC)


def test_model_bytes_round_trip_and_hostile_bytes_are_one_line_errors(models) -> None:
    data = models["model"].read_bytes()
    model = IntegerModel.from_bytes(data)
    assert model.to_bytes() == data and len(model.sha256) == 64
    with pytest.raises(IntegerModelError, match="features is 5000, more than 1024"):
        IntegerModel.from_bytes(_crafted(("uint", 2), ("uint", 5000)))
    with pytest.raises(IntegerModelError, match="truncated"):  # 4,000 claimed, 0 present
        IntegerModel.from_bytes(_crafted(("uint", 2), ("uint", 3), ("array", 4000)))
    bad = {
        "empty": b"",
        "magic": b"XXXX" + data[4:],
        "version": data[:4] + b"\x09" + data[5:],
        "truncated": data[: len(data) // 2],
        "huge body": data[:5] + (2**31).to_bytes(4, "little") + data[9:],
        "flipped": data[:-20] + bytes([data[-20] ^ 0x55]) + data[-19:],
    }
    for name, blob in bad.items():
        with pytest.raises(IntegerModelError) as e:
            IntegerModel.from_bytes(blob)
        assert "\n" not in str(e.value), name


# ---------------------------------------------------------------- portability
WRITE = """
import sys
from pathlib import Path
import numpy as np, torch
from meaning_transform.codec.chunks import encode_chunk
from meaning_transform.models.integer_model import IntegerEncoder, IntegerModel
d = Path(sys.argv[1])
model = IntegerModel.from_bytes((d / "model.bin").read_bytes())
encoder = IntegerEncoder.from_bytes((d / "encoder.bin").read_bytes())
symbols, flag = np.load(d / "symbols.npy"), np.load(d / "flag.npy")
chunk = encode_chunk(model, symbols, flag, encoder.offsets(symbols, flag))
np.savez(sys.argv[2], z=chunk.z_words, x=chunk.x_words)
print(torch.backends.cpu.get_cpu_capability())
"""

READ = """
import sys
from pathlib import Path
import numpy as np, torch
from meaning_transform.codec.chunks import decode_chunk
from meaning_transform.models.integer_model import IntegerModel
d = Path(sys.argv[1])
model = IntegerModel.from_bytes((d / "model.bin").read_bytes())
flag = np.load(d / "flag.npy")
out = {}
for name in sys.argv[2:]:
    coded = np.load(d / f"{name}.npz")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out[f"{name}_{threads}"] = decode_chunk(model, coded["z"], coded["x"], flag)
np.savez(d / f"decoded_{torch.backends.cpu.get_cpu_capability()}.npz", **out)
print(torch.backends.cpu.get_cpu_capability())
"""

WRITERS = {"native": {}, "default": {"ATEN_CPU_CAPABILITY": "default"}}


def _run(script: str, env: dict[str, str], *args: str) -> str:
    full = {**os.environ, "PYTHONPATH": str(REPO / "src"), **env}
    r = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _numpy_baseline() -> dict[str, str]:
    """Environment that pins numpy's SIMD dispatch and OpenBLAS's kernels to their baseline."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    found = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    return {"NPY_DISABLE_CPU_FEATURES": " ".join(found), "OPENBLAS_CORETYPE": "Prescott"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny history model's integer model and encoder, a chunk's symbols with an escape, and
    that chunk as written by each writer subprocess."""
    import torch

    from meaning_transform.api import load_config
    from meaning_transform.codec.model import build_model, read_model
    from meaning_transform.config import instantiate_checked
    from meaning_transform.data.context import has_previous
    from meaning_transform.models.integer_export import export, export_encoder

    tmp = tmp_path_factory.mktemp("portable")
    ckpt = train_lossless(tmp / "run", "model.context=history", *TINY[:2])
    module = build_model(read_model(ckpt)[0], ckpt)
    cfg = load_config(list(TINY[:2]))  # the data the model was trained on
    dm = instantiate_checked(cfg.data, "data", schema=cfg.schema)
    dm.setup()
    x = torch.cat([dm.train_x, dm.val_x, dm.test_x])
    agents = np.concatenate([dm.train_agents, dm.val_agents, dm.test_agents])
    symbols = module.codec.symbols(x)
    symbols[7, 0] += 5000  # past the absolute and the delta bins: escapes
    np.save(tmp / "symbols.npy", symbols)
    np.save(tmp / "flag.npy", has_previous(agents))
    (tmp / "model.bin").write_bytes(export(module.codec, module.bottleneck).to_bytes())
    (tmp / "encoder.bin").write_bytes(export_encoder(module.codec, module.bottleneck).to_bytes())
    paths = {"dir": tmp, "model": tmp / "model.bin"}
    for name, env in WRITERS.items():
        capability = _run(WRITE, env, str(tmp), str(tmp / f"{name}.npz"))
        assert name == "native" or capability == "DEFAULT"
        paths[name] = tmp / f"{name}.npz"
    return paths


def test_both_writers_write_the_same_bytes(models) -> None:
    a, b = np.load(models["native"]), np.load(models["default"])
    assert np.array_equal(a["z"], b["z"]) and np.array_equal(a["x"], b["x"])
    assert len(a["x"]) > 0


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_every_kernel_set_and_thread_count_decodes_both_files(models, capability) -> None:
    import torch

    have = torch.backends.cpu.get_cpu_capability()
    if capability == "avx512" and have != "AVX512":
        pytest.skip(f"this CPU's best torch kernels are {have}, not AVX512")
    if capability == "avx2" and have not in ("AVX2", "AVX512"):
        pytest.skip(f"this CPU's best torch kernels are {have}, not AVX2")
    env = {"ATEN_CPU_CAPABILITY": capability}
    if capability == "default":
        env |= _numpy_baseline()
    tmp = models["dir"]
    got = _run(READ, env, str(tmp), *WRITERS)
    assert got == capability.upper()
    decoded = np.load(tmp / f"decoded_{got}.npz")
    symbols = np.load(tmp / "symbols.npy")
    assert sorted(decoded.files) == [f"{w}_{t}" for w in sorted(WRITERS) for t in (1, 2)]
    for key in decoded.files:
        assert np.array_equal(decoded[key], symbols), key


# ---------------------------------------------------------------- the default coder, whole file
def test_the_default_coder_writes_the_same_file_and_decodes_under_portable_kernels(
    real_db, tmp_path
) -> None:
    """The default (adaptive) coder, whole database: the first 60 steps of a real run written
    under the default kernels and under ``ATEN_CPU_CAPABILITY=default`` (numpy and OpenBLAS at
    their baseline too) are the same bytes, and the file verifies under the portable ones."""
    import shutil
    import sqlite3
    from contextlib import closing

    db = tmp_path / "slice.db"
    shutil.copy(real_db, db)
    with closing(sqlite3.connect(db)) as con:
        for table in ("agent_states", "agent_actions", "health_incidents", "resource_states"):
            con.execute(f"DELETE FROM {table} WHERE step_number > 60")
        con.commit()
        con.execute("VACUUM")
    portable = {"ATEN_CPU_CAPABILITY": "default", **_numpy_baseline()}
    codec = "from meaning_transform.codec.__main__ import main; import sys; sys.exit(main(sys.argv[1:]))"
    for name, env in (("native", {}), ("portable", portable)):
        _run(codec, env, "compress", str(db), str(tmp_path / f"{name}.mtc"))
    assert (tmp_path / "native.mtc").read_bytes() == (tmp_path / "portable.mtc").read_bytes()
    _run(codec, portable, "verify", str(tmp_path / "native.mtc"), str(db))
