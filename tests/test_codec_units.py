"""Unit tests of the lossless codec's pieces, on numbers that can be checked by hand."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from meaning_transform.codec.chunks import blocks, decode_chunk, encode_chunk, float_bits
from meaning_transform.codec.container import Chunk, CodecFileError, Reader, Writer
from meaning_transform.data.context import has_previous, split_batch, with_previous
from meaning_transform.data.synthetic import generate_synthetic
from meaning_transform.errors import ConfigError
from meaning_transform.models.bottlenecks.entropy import EntropyBottleneck
from meaning_transform.models.integer_export import export, export_encoder
from meaning_transform.models.lossless import (
    HeadLayout,
    LosslessCodec,
    _cosine_basis,
    delta_layout,
)


# ---------------------------------------------------------------- context pairing
def test_with_previous_pairs_rows_of_the_same_agent() -> None:
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    rows = with_previous(x, np.array([7, 7, 9, 9]))
    assert rows.tolist() == [[1, 0, 0], [2, 1, 1], [3, 0, 0], [4, 3, 1]]
    state, context = split_batch(rows, 1)
    assert state.tolist() == [[1], [2], [3], [4]] and context[:, 1].tolist() == [0, 1, 0, 1]
    assert has_previous(np.array(["a", "b", "b"])).tolist() == [False, False, True]


def test_steps_unchanged_counts_by_hand_and_matches_the_decoders_recursion() -> None:
    from meaning_transform.data.context import next_steps_unchanged, steps_unchanged

    symbols = np.array([[5], [5], [5], [6], [6], [1], [1]])
    flag = np.array([False, True, True, True, True, False, True])
    runs = steps_unchanged(symbols, flag)
    assert runs[:, 0].tolist() == [0, 1, 2, 3, 1, 0, 1]
    rows = np.arange(2, 7)
    rows = rows[flag[rows] & flag[rows - 1]]
    again = next_steps_unchanged(
        symbols[rows - 1], symbols[rows - 2], runs[rows - 1], flag[rows - 1]
    )
    assert again.tolist() == runs[rows].tolist()
    rows = np.arange(1, 7)[flag[1:] & ~flag[:-1]]  # second row of an agent: count 1
    assert next_steps_unchanged(symbols[rows - 1], symbols[rows - 2], runs[rows - 1],
                                flag[rows - 1]).tolist() == [[1]] * len(rows)  # fmt: skip


def test_split_batch_and_bad_context_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="needs batches of 3 columns"):
        split_batch(torch.zeros(2, 1), 1)
    from meaning_transform.data.context import check_context

    with pytest.raises(ConfigError, match="model.context='next' is invalid"):
        check_context("next")


def test_synthetic_agents_move_at_most_one_cell_per_step() -> None:
    t = generate_synthetic(3000, seed=1)
    same = t["agent_id"][1:] == t["agent_id"][:-1]
    moved = np.abs(np.diff(t["position_x"])) + np.abs(np.diff(t["position_y"]))
    assert set(np.unique(moved[same])) <= {0.0, 1.0} and (moved[same] == 1).mean() > 0.2


# ---------------------------------------------------------------- head layouts
def test_layout_index_escapes_and_modulo() -> None:
    layout = HeadLayout(
        lo=np.array([-2, 0]), n=np.array([5, 2]), escape=np.array([True, False]),
        modulo=np.array([0, 2]),
    )  # fmt: skip
    values = np.array([[-3, 1], [-2, -1], [0, 2], [2, 3], [3, 0]])
    index, escaped, rel = layout.index(values)
    assert index[:, 0].tolist() == [5, 0, 2, 4, 5]  # -3 and 3 escape (bin 5)
    assert escaped[:, 0].tolist() == [True, False, False, False, True]
    assert rel[:, 0].tolist() == [-1, 0, 2, 4, 5]
    assert index[:, 1].tolist() == [1, 1, 0, 1, 0]  # binary changes are mod 2 (xor)
    assert layout.size.tolist() == [6, 2]


def test_cosine_basis_is_the_identity_when_it_has_every_bin() -> None:
    assert torch.equal(_cosine_basis(3, 5), torch.eye(3))
    b = _cosine_basis(8, 3)
    assert b.shape == (3, 8) and torch.allclose(b[0], torch.ones(8))
    assert abs(float(b[1] @ b[2])) < 1e-5  # DCT rows are orthogonal


def _codec(context: str | None, n: int = 600, seed: int = 0):
    from meaning_transform.data import SyntheticDataModule

    dm = SyntheticDataModule(
        {"features": _features(), "predicates": _predicates()}, num_states=n, seed=seed
    )
    dm.setup()
    schema = dm.schema
    codec = LosslessCodec(schema.input_dim, schema.head_dim, schema, latent_dim=2,
                          hidden_dims=(16,), context=context, delta_window=2)  # fmt: skip
    module = torch.nn.Module()
    module.codec, module.bottleneck = codec, EntropyBottleneck(2, init_scale=2.0)
    module.eval()
    return module, dm


def _features():
    import yaml
    from conftest import AGENTFARM_SCHEMA

    return yaml.safe_load(AGENTFARM_SCHEMA.read_text())["features"]


def _predicates():
    import yaml
    from conftest import AGENTFARM_SCHEMA

    return yaml.safe_load(AGENTFARM_SCHEMA.read_text())["predicates"]


def test_untrained_heads_are_uniform_and_bits_are_log2_of_the_sizes() -> None:
    module, dm = _codec("previous")
    codec = module.codec
    for head in (codec.absolute_head, codec.delta_head):
        torch.nn.init.zeros_(head.coef.weight), torch.nn.init.zeros_(head.coef.bias)
    symbols = codec.symbols(dm.train_x[:50])
    z = torch.zeros(50, 2)
    for delta in (False, True):
        layout = codec.layout(delta)
        prev = symbols if delta else None  # change 0: never an escape
        logp = codec.log_probs(z, codec.context_input(symbols, np.ones(50, bool)), delta)
        bits = codec.nll_bits(logp, symbols, prev, delta)
        expected = sum(math.log2(s) for s in layout.size.tolist())
        if not delta:  # absolute: symbols outside the bins pay the escape payload too
            _, escaped, _ = layout.index(symbols)
            assert not escaped.any()
        assert torch.allclose(bits, torch.full((50,), expected, dtype=bits.dtype), atol=1e-4)
    assert delta_layout(codec.grid, 2).n.tolist()[0] == 5  # -2..2


# ---------------------------------------------------------------- chunk coding
def test_blocks_are_waves_of_each_runs_rows() -> None:
    flag = np.array([False, True, True, False, True])
    assert [(w, r.tolist()) for w, r in blocks(flag)] == [(0, [0, 3]), (1, [1, 4]), (2, [2])]
    with pytest.raises(ValueError):
        blocks(np.array([True, False]))


@pytest.mark.parametrize("context", [None, "previous", "history"])
def test_chunk_round_trip_is_exact_and_within_one_percent(context) -> None:
    module, dm = _codec(context, n=3000)
    codec = module.codec
    symbols = codec.symbols(dm.train_x)
    flag = has_previous(dm.train_agents)
    # an out-of-range value must escape and still round-trip
    symbols[5, 0] += 10_000
    model = export(codec, module.bottleneck)
    assert (model.absolute.coefs < model.absolute.layout.n).any()  # smooth bins: cosine tables
    offsets = export_encoder(codec, module.bottleneck).offsets(symbols, flag)
    chunk = encode_chunk(model, symbols, flag, offsets)
    decoded = decode_chunk(model, chunk.z_words, chunk.x_words, flag)
    assert np.array_equal(decoded, symbols)
    assert abs(8 * chunk.num_bytes / chunk.estimated_bits - 1) < 0.01
    # quantization costs little against the float model's own price of the same chunk
    assert abs(chunk.estimated_bits / float_bits(module, symbols, flag) - 1) < 0.02
    with pytest.raises(ValueError):  # another model's bytes do not decode quietly
        other, _ = _codec(context, n=3000, seed=1)
        other_model = export(other.codec, other.bottleneck)
        bad = decode_chunk(other_model, chunk.z_words, chunk.x_words, flag)
        assert not np.array_equal(bad, symbols)
        raise ValueError("decoded differently")


# ---------------------------------------------------------------- container
#: the smallest header the reader accepts (one feature, one table, chunks of 3 states)
HEADER = {
    "model": {"integer_sha256": "1" * 64, "source": "embedded"},
    "schema": {"features": {"x": {}}},
    "context": None,
    "states": {
        "columns": ["agent_id", "step_number", "x"],
        "features": ["x"],
        "agent_features": [],
        "row_order": "step_agent",
        "rows": 6,
    },
    "objects": [],
    "settings": {},
    "tables": ["t"],
    "tolerances": {},
    "chunk_size": 3,
}
META = {"n": 3, "symbols_crc": 0, "estimated": 1.0, "ranges": [[0, 1]]}


def _file(chunks: int = 2, header: dict | None = None) -> bytes:
    buf = io.BytesIO()
    w = Writer(buf, header or HEADER, b"model")
    w.block("t", b"rows of t")
    for i in range(chunks):
        w.chunk(Chunk(dict(META), np.array([i], np.uint32), np.array([1, 2], np.uint32), b"cols"))
    w.close()
    return buf.getvalue()


def _read_all(data: bytes) -> list:
    r = Reader(io.BytesIO(data), "f.mtc")
    return [item for _, item, _ in r.sections()]


def test_container_round_trip() -> None:
    table, *chunks = _read_all(_file())
    assert table == ("t", b"rows of t")
    assert [c.z_words.tolist() for c in chunks] == [[0], [1]] and chunks[1].columns == b"cols"


@pytest.mark.parametrize("cut", [3, 20, 60, -5, -30])
def test_truncated_file_is_an_error(cut: int) -> None:
    data = _file()
    with pytest.raises(CodecFileError, match="truncated|corrupted|magic"):
        _read_all(data[:cut])


def test_every_corrupted_byte_is_an_error() -> None:
    data = _file()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x41
        with pytest.raises(CodecFileError):
            _read_all(bytes(bad))


def test_a_file_of_an_older_version_says_which() -> None:
    data = _file()
    old = data[:8] + (3).to_bytes(2, "little") + data[10:]  # version 3: agent_states only
    with pytest.raises(
        CodecFileError, match="has format version 3; this version of .* reads format 4"
    ):
        _read_all(old)


def test_a_removed_chunk_is_an_error() -> None:
    one, two = _file(1), _file(2)  # same header: the sections start at the same offset
    head = len(one) - 24  # the sections of a 1-chunk file end before its 24-byte trailer
    with pytest.raises(CodecFileError, match="end marker"):
        _read_all(two[:head] + two[-24:])
