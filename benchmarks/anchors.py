"""Anchors: what real compressors make of the agent_states rows our codec codes.

Each anchor codes the features of the same rows (``anchor_rows.StateRows``: (agent, step)
order, the meaning grid at k = 1 of the codec's fitted schema), decodes them, and checks every
value (``anchor_rows``' checks):
grid coders must give the symbols back exactly (hence every value within tolerance and every
predicate kept); error-bounded coders must give every continuous value within its tolerance
(the slack ``verify`` allows) and every binary/categorical value exactly. An anchor returns
bytes, bits per state and the measured compress/decompress seconds of its chosen settings.

- ``openzl_anchor``: OpenZL's standard graphs (``openzl.ext.graphs``, alone or after one
  standard node: zigzag, delta) on the grid symbols, as they are (``grid``) and as per-agent
  differences (``deltas``: an agent's first state absolute, then the difference from its
  previous state; binary/categorical columns mod their vocabulary, as ``baselines.deltas``).
  Per layout: the best single graph for every column, and the best graph per column; and the
  best (layout, graph) per column. All columns go into one OpenZL frame.
- ``sz3_anchor``: SZ3 (``numcodecs-wasm-sz3``), absolute error bound = each feature's
  tolerance, the ``lorenzo`` predictor; and the best predictor per column.
- ``pcodec_anchor``: pcodec on the grid symbols (either layout): the best single setting
  (layout, level, delta spec, mode spec) and the best setting per column.
- ``zfp_anchor``: ZFP (``zfpy``) in fixed-accuracy mode at each tolerance.
- ``keys_anchor``: the keys (agent_id, step_number) as the agent ids of the runs, each run's
  first step and length (and the rows whose steps are not consecutive), under zstd -19.
- ``zstd_grid_anchor``: zstd -19 of the grid symbols column by column (the classical row).

SZ3 and ZFP code binary/categorical columns exactly by the smaller of (the same coder at an
absolute bound of 0.49 on the integer codes, then rounding) and zstd -19 of the int8 codes;
which one is recorded. Tolerance bounds say nothing of predicates: how many predicate truths
their decoded states flip is reported (``predicate_mismatches``), not counted as a failure.

A package that is not installed makes its anchor raise ``AnchorSkipped`` (one line);
``measure_anchors`` records it as skipped. Install them with ``pip install -e .[bench]``.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchor_rows import (  # noqa: E402
    LAYOUTS,
    ZSTD_LEVEL,
    AnchorSkipped,
    CheckFailed,
    StateRows,
    check_equal,
    check_grid,
    check_within,
    column_errors,
    from_layout,
    layout_of,
    measured,
    predicate_mismatches,
    require,
    smallest_int,
    unzstd,
    zstd_bytes,
)

from meaning_transform.baselines import first_of_agent  # noqa: E402
from meaning_transform.messages import one_line  # noqa: E402

EXACT_BOUND = 0.49  # an absolute bound below 0.5 on integer codes: rounding gives them back


# ---------------------------------------------------------------------- zstd of the grid
def zstd_grid_anchor(rows: StateRows) -> dict[str, Any]:
    """zstd -19 of the grid symbols, column by column, each in its smallest integer type."""
    cols = [smallest_int(c) for c in rows.symbols.T]
    t = time.perf_counter()
    blob = zstd_bytes(b"".join(c.tobytes() for c in cols))
    c_s = time.perf_counter() - t
    t = time.perf_counter()
    raw = unzstd(blob, sum(c.nbytes for c in cols))
    out, at = np.empty(rows.symbols.shape, dtype=np.int64), 0
    for j, c in enumerate(cols):
        out[:, j] = np.frombuffer(raw, c.dtype, len(c), at)
        at += c.nbytes
    d_s = time.perf_counter() - t
    check_grid(rows, out, "zstd grid")
    return measured(rows, len(blob), c_s, d_s)


# ---------------------------------------------------------------------- grid coders, shared
Setting = tuple[str, str]  # (layout, the coder's settings by name)
Sizes = dict[tuple[Setting, int], int]  # (setting, column) -> bytes of that column alone


def _grid_rows(
    rows: StateRows, sizes: Sizes, code: Callable[[list[Setting]], dict[str, Any]]
) -> dict[str, Any]:
    """Per layout the best single setting and the best per column; then the best per column
    over both layouts: each coded by ``code`` (which measures and checks it). ``bytes_alone``:
    every setting tried, per layout and column, with its bytes when coding that column alone."""
    ncols = len(rows.names)
    alone: dict[str, dict[str, dict[str, int]]] = {}
    for ((lay, setting), j), size in sizes.items():
        alone.setdefault(lay, {}).setdefault(rows.names[j], {})[setting] = size
    out: dict[str, Any] = {"bytes_alone": alone}
    for lay in LAYOUTS:
        single = _best_single(sizes, ncols, lay)
        out[f"{lay}_best_single"] = {**code([single] * ncols), "setting": single[1]}
        out[f"{lay}_per_column"] = code(_per_column(sizes, ncols, (lay,)))
    out["any_layout_per_column"] = code(_per_column(sizes, ncols, LAYOUTS))
    return out


def _best_single(sizes: Sizes, ncols: int, layout: str) -> Setting:
    """The setting of ``layout`` that codes every column, smallest in total."""
    totals: dict[Setting, int] = {}
    count: dict[Setting, int] = {}
    for (setting, _), size in sizes.items():
        if setting[0] == layout:
            totals[setting] = totals.get(setting, 0) + size
            count[setting] = count.get(setting, 0) + 1
    usable = [s for s in totals if count[s] == ncols]
    return min(usable, key=totals.__getitem__)


def _per_column(sizes: Sizes, ncols: int, layouts: tuple[str, ...]) -> list[Setting]:
    """Per column, the setting (of ``layouts``) that codes it smallest alone."""
    choice = []
    for j in range(ncols):
        mine = {s: size for (s, jj), size in sizes.items() if jj == j and s[0] in layouts}
        choice.append(min(mine, key=mine.__getitem__))
    return choice


def _layout_columns(rows: StateRows, choice: list[Setting]) -> list[np.ndarray]:
    """Column j of the symbols in the layout ``choice[j]`` names."""
    per_layout = {lay: layout_of(rows, lay) for lay in {lay for lay, _ in choice}}
    return [per_layout[lay][:, j] for j, (lay, _) in enumerate(choice)]


def _symbols_from(rows: StateRows, choice: list[Setting], cols: list[np.ndarray]) -> np.ndarray:
    """Inverse of ``_layout_columns``: decoded columns -> grid symbols [N, F]."""
    values = np.stack([np.asarray(c, dtype=np.int64) for c in cols], axis=1)
    symbols = values.copy()
    for lay in {lay for lay, _ in choice}:
        js = [j for j, (lj, _) in enumerate(choice) if lj == lay]
        symbols[:, js] = from_layout(rows, lay, values)[:, js]
    return symbols


def _described(rows: StateRows, choice: list[Setting], sizes: Sizes) -> dict[str, Any]:
    """Per feature: its layout, setting and bytes when coded alone."""
    return {
        "columns": {
            name: {"layout": lay, "setting": s, "bytes_alone": sizes[((lay, s), j)]}
            for j, (name, (lay, s)) in enumerate(zip(rows.names, choice, strict=True))
        }
    }


# ---------------------------------------------------------------------- OpenZL
def openzl_graphs(zl: Any) -> dict[str, Callable[[Any], Any]]:
    """Standard OpenZL graphs for a numeric column: name -> builder(compressor) -> GraphID."""
    g, n = zl.graphs, zl.nodes
    plain = {
        "compress": lambda c: g.Compress()(c),
        "zstd": lambda c: g.Zstd()(c),
        "zstd19": lambda c: g.Zstd(compression_level=ZSTD_LEVEL)(c),
        "field_lz": lambda c: g.FieldLz()(c),
        "entropy": lambda c: g.Entropy()(c),
        "huffman": lambda c: g.Huffman()(c),
        "fse": lambda c: g.Fse()(c),
        "bitpack": lambda c: g.Bitpack()(c),
        "flatpack": lambda c: g.Flatpack()(c),
        "constant": lambda c: g.Constant()(c),
        "store": lambda c: g.Store()(c),
    }
    after = {"zigzag": n.Zigzag, "delta_int": n.DeltaInt}
    chained = {
        f"{node}>{name}": (lambda c, node=make, name=name: node()(c, plain[name](c)))
        for (node, make), name in itertools.product(
            after.items(), ("compress", "zstd19", "field_lz", "entropy", "huffman", "fse")
        )
    }
    return {**plain, **chained}


def _openzl_frame(zl: Any, builders: list[Callable[[Any], Any]], cols: list[np.ndarray]) -> bytes:
    """One OpenZL frame holding every column, column j through the graph ``builders[j]``."""

    class PerColumn(zl.FunctionGraph):
        """Sends input j to its own graph (the standard graphs, one per column)."""

        def __init__(self, graphs: list[Any]) -> None:
            super().__init__()
            self.graphs = graphs

        def function_graph_description(self) -> Any:
            return zl.FunctionGraphDescription(
                name="per_column",
                input_type_masks=[zl.TypeMask.Numeric],
                last_input_is_variable=True,
                custom_graphs=self.graphs,
            )

        def graph(self, state: Any) -> None:
            for graph, edge in zip(state.custom_graphs, state.edges, strict=True):
                edge.set_destination(graph)

    compressor = zl.Compressor()
    compressor.set_parameter(zl.CParam.FormatVersion, zl.MAX_FORMAT_VERSION)
    if len(cols) == 1:
        start = builders[0](compressor)
    else:
        start = compressor.register_function_graph(PerColumn([b(compressor) for b in builders]))
    compressor.select_starting_graph(start)
    cctx = zl.CCtx()
    cctx.ref_compressor(compressor)
    return cctx.compress([zl.Input(zl.Type.Numeric, c) for c in cols])


def _openzl_unframe(zl: Any, blob: bytes, dtypes: list[np.dtype]) -> list[np.ndarray]:
    """The columns of an OpenZL frame (a frame describes itself: no graph needed)."""
    outs = zl.DCtx().decompress(blob)
    if len(outs) != len(dtypes):
        raise CheckFailed(f"OpenZL frame holds {len(outs)} columns, expected {len(dtypes)}")
    return [np.frombuffer(o.content.as_bytes(), dtype=d) for o, d in zip(outs, dtypes, strict=True)]


def _openzl_size(zl: Any, builder: Callable[[Any], Any], col: np.ndarray) -> int | None:
    """Bytes of one column in its own frame through ``builder``; None when the graph refuses
    it (wrong type or width) or does not give it back."""
    try:
        blob = _openzl_frame(zl, [builder], [col])
        (back,) = _openzl_unframe(zl, blob, [col.dtype])
    except (RuntimeError, CheckFailed):
        return None
    return len(blob) if np.array_equal(back, col) else None


def openzl_anchor(rows: StateRows) -> dict[str, Any]:
    """OpenZL's standard graphs on the grid symbols and their per-agent differences."""
    zl = require("openzl.ext")
    graphs = openzl_graphs(zl)
    cols = {lay: [smallest_int(c) for c in layout_of(rows, lay).T] for lay in LAYOUTS}
    sizes: Sizes = {}
    for lay, name in itertools.product(LAYOUTS, graphs):
        for j, col in enumerate(cols[lay]):
            size = _openzl_size(zl, graphs[name], col)
            if size is not None:
                sizes[((lay, name), j)] = size

    def code(choice: list[Setting]) -> dict[str, Any]:
        """Every column as ``choice`` says, in one frame: timed, decoded, checked."""
        t = time.perf_counter()
        coded = [smallest_int(c) for c in _layout_columns(rows, choice)]
        blob = _openzl_frame(zl, [graphs[g] for _, g in choice], coded)
        c_s = time.perf_counter() - t
        t = time.perf_counter()
        back = _openzl_unframe(zl, blob, [c.dtype for c in coded])
        symbols = _symbols_from(rows, choice, back)
        d_s = time.perf_counter() - t
        worst = check_grid(rows, symbols, "OpenZL")
        return measured(
            rows,
            len(blob),
            c_s,
            d_s,
            **_described(rows, choice, sizes),
            max_error_in_tolerances=worst,
        )

    return _grid_rows(rows, sizes, code)


# ---------------------------------------------------------------------- pcodec
PCODEC_LEVELS = (8, 12)


def pcodec_settings(pco: Any) -> dict[str, Any]:
    """pcodec ChunkConfig keyword sets tried: name -> (level, delta spec, mode spec)."""
    d, m = pco.DeltaSpec, pco.ModeSpec
    deltas_ = {
        "auto": d.auto,
        "none": d.no_op,
        "consecutive1": lambda: d.try_consecutive(1),
        "consecutive2": lambda: d.try_consecutive(2),
        "lookback": d.try_lookback,
    }
    modes = {"auto": m.auto, "classic": m.classic, "dict": m.try_dict}
    return {
        f"level={lvl} delta={dn} mode={mn}": (lvl, dm, mm)
        for lvl, (dn, dm), (mn, mm) in itertools.product(
            PCODEC_LEVELS, deltas_.items(), modes.items()
        )
    }


def pcodec_anchor(rows: StateRows) -> dict[str, Any]:
    """pcodec on the grid symbols (each column a standalone pcodec file), best settings."""
    pco = require("pcodec")
    settings = pcodec_settings(pco)

    def compress(col: np.ndarray, name: str) -> bytes:
        level, delta, mode = settings[name]
        config = pco.ChunkConfig(
            compression_level=level,
            delta_spec=delta(),
            mode_spec=mode(),
            enable_8_bit=col.dtype.itemsize == 1,
        )
        return pco.standalone.simple_compress(col, config)

    sizes: Sizes = {}
    for lay in LAYOUTS:
        for j, col in enumerate(layout_of(rows, lay).T):
            col = smallest_int(col)
            for name in settings:
                blob = compress(col, name)
                if np.array_equal(pco.standalone.simple_decompress(blob), col):
                    sizes[((lay, name), j)] = len(blob)

    def code(choice: list[Setting]) -> dict[str, Any]:
        t = time.perf_counter()
        coded = [smallest_int(c) for c in _layout_columns(rows, choice)]
        blobs = [compress(c, s) for c, (_, s) in zip(coded, choice, strict=True)]
        c_s = time.perf_counter() - t
        t = time.perf_counter()
        back = [pco.standalone.simple_decompress(b) for b in blobs]
        symbols = _symbols_from(rows, choice, back)
        d_s = time.perf_counter() - t
        worst = check_grid(rows, symbols, "pcodec")
        nbytes = sum(len(b) for b in blobs)
        return measured(
            rows, nbytes, c_s, d_s, **_described(rows, choice, sizes), max_error_in_tolerances=worst
        )

    return _grid_rows(rows, sizes, code)


# ---------------------------------------------------------------------- error-bounded coders
Coder = tuple[Callable[[np.ndarray], bytes], Callable[[bytes], np.ndarray]]  # (encode, decode)


def _exact_coders(lossy: Callable[[float], Coder]) -> dict[str, Coder]:
    """Exact coders of a binary/categorical column: the lossy coder at a bound of 0.49 on the
    codes and rounding; zstd -19 of the codes in their smallest integer type."""
    enc, dec = lossy(EXACT_BOUND)

    def zstd_enc(col: np.ndarray) -> bytes:
        ints = smallest_int(np.rint(col).astype(np.int64))
        return bytes([ints.dtype.itemsize]) + zstd_bytes(ints.tobytes())

    def zstd_dec(blob: bytes) -> np.ndarray:
        width = blob[0]
        dtype = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[width]
        return np.frombuffer(unzstd(blob[1:], 1 << 34), dtype=dtype).astype(np.float64)

    return {
        f"bound {EXACT_BOUND}, rounded": (enc, lambda b: np.rint(dec(b))),
        "zstd-19 of the codes": (zstd_enc, zstd_dec),
    }


def _bounded_rows(rows: StateRows, name: str, coders: list[dict[str, Coder]]) -> dict[str, Any]:
    """Per column the smallest of ``coders[j]`` whose decode checks; coded again, timed, and
    the whole decode checked."""
    choice: list[str] = []
    sizes: list[int] = []
    for j, options in enumerate(coders):
        col = np.ascontiguousarray(rows.native[:, j])
        ok = {}
        for label, (enc, dec) in options.items():
            blob = enc(col)
            if column_errors(rows, j, dec(blob))[0] == 0:
                ok[label] = len(blob)
        if not ok:
            raise CheckFailed(f"{name}: no setting keeps {rows.names[j]} within tolerance")
        choice.append(min(ok, key=ok.__getitem__))
        sizes.append(ok[choice[-1]])
    cols = [np.ascontiguousarray(c) for c in rows.native.T]
    t = time.perf_counter()
    blobs = [coders[j][c][0](cols[j]) for j, c in enumerate(choice)]
    c_s = time.perf_counter() - t
    t = time.perf_counter()
    decoded = np.stack(
        [coders[j][c][1](b) for j, (c, b) in enumerate(zip(choice, blobs, strict=True))], axis=1
    )
    d_s = time.perf_counter() - t
    worst = check_within(rows, decoded, name)
    columns = {
        n: {"setting": c, "bytes": len(b)}
        for n, c, b in zip(rows.names, choice, blobs, strict=True)
    }
    return measured(
        rows,
        sum(len(b) for b in blobs),
        c_s,
        d_s,
        columns=columns,
        max_error_in_tolerances=worst,
        predicate_mismatches=predicate_mismatches(rows, decoded),
    )


SZ3_PREDICTORS = (
    "lorenzo",
    "lorenzo2",
    "lorenzo-lorenzo2",
    "regression",
    "lorenzo-regression",
    "interpolation",
    "interpolation-lorenzo",
)


def sz3_anchor(rows: StateRows) -> dict[str, Any]:
    """SZ3 at an absolute bound = each tolerance: the lorenzo predictor; the best per column."""
    sz3 = require("numcodecs_wasm_sz3")

    def coder(bound: float, predictor: str, dtype: type) -> Coder:
        codec = sz3.Sz3(eb_mode="abs", eb_abs=float(bound), predictor=predictor)
        return (
            lambda col: bytes(codec.encode(np.ascontiguousarray(col, dtype=dtype))),
            lambda blob: np.asarray(
                codec.decode(np.frombuffer(blob, np.uint8)), dtype=np.float64
            ).reshape(-1),
        )

    try:
        coder(1.0, "lorenzo", np.float64)[0](np.zeros(8))  # compiles the WebAssembly once
    except Exception as e:  # noqa: BLE001
        raise AnchorSkipped(f"numcodecs_wasm_sz3 does not run here: {one_line(e)}") from None

    def options(predictors: tuple[str, ...]) -> list[dict[str, Coder]]:
        out = []
        for j, tol in enumerate(rows.tolerances):
            made = {}
            for p, dtype in itertools.product(predictors, (np.float64, np.float32)):
                label = f"{p} {np.dtype(dtype).name}"
                if rows.continuous[j]:
                    made[label] = coder(tol, p, dtype)
                else:
                    for k, v in _exact_coders(lambda b, p=p, d=dtype: coder(b, p, d)).items():
                        made[f"{k} ({label})" if k.startswith("bound") else k] = v
            out.append(made)
        return out

    return {
        "lorenzo": _bounded_rows(rows, "SZ3 lorenzo", options(("lorenzo",))),
        "best_per_column": _bounded_rows(rows, "SZ3", options(SZ3_PREDICTORS)),
    }


def zfp_anchor(rows: StateRows) -> dict[str, Any]:
    """ZFP in fixed-accuracy mode at each tolerance (float64 or float32 input, per column)."""
    zfpy = require("zfpy")

    def coder(bound: float, dtype: type) -> Coder:
        return (
            lambda col: zfpy.compress_numpy(
                np.ascontiguousarray(col, dtype=dtype), tolerance=float(bound)
            ),
            lambda blob: np.asarray(zfpy.decompress_numpy(blob), dtype=np.float64),
        )

    options = []
    for j, tol in enumerate(rows.tolerances):
        made = {}
        for dtype in (np.float64, np.float32):
            name = np.dtype(dtype).name
            if rows.continuous[j]:
                made[f"tolerance {tol:g} {name}"] = coder(tol, dtype)
            else:
                for k, v in _exact_coders(lambda b, d=dtype: coder(b, d)).items():
                    made[f"{k} ({name})" if k.startswith("bound") else k] = v
        options.append(made)
    return {"fixed_accuracy": _bounded_rows(rows, "ZFP", options)}


# ---------------------------------------------------------------------- keys
def keys_anchor(rows: StateRows) -> dict[str, Any]:
    """The keys under zstd -19: per agent run its agent_id, first step and length (and the
    rows whose step is not the previous one + 1); also without the id texts."""
    first = first_of_agent(rows.agent_ids)
    starts = np.flatnonzero(first)
    lengths = np.diff(np.append(starts, rows.n))
    ids = [str(a) for a in rows.agent_ids[starts]]
    if any("\0" in a for a in ids):
        raise ValueError("an agent_id holds a NUL character")
    expected = np.repeat(rows.steps[starts], lengths) + _offsets(lengths)
    odd = np.flatnonzero(rows.steps != expected)  # rows that are not consecutive steps
    t = time.perf_counter()
    numbers = [smallest_int(a) for a in (rows.steps[starts], lengths, odd, rows.steps[odd])]
    text = "\0".join(ids).encode()
    head = np.array(
        [len(text), len(starts), len(odd)] + [a.dtype.itemsize for a in numbers], dtype=np.int64
    )
    body = b"".join(a.tobytes() for a in numbers)
    with_ids, without = zstd_bytes(head.tobytes() + text + body), zstd_bytes(head.tobytes() + body)
    c_s = time.perf_counter() - t
    t = time.perf_counter()
    agent_ids, steps = _decode_keys(unzstd(with_ids, 1 << 34))
    d_s = time.perf_counter() - t
    check_equal(
        np.array([str(a) for a in rows.agent_ids], dtype=object), agent_ids, "keys: agent_id"
    )
    check_equal(rows.steps, steps, "keys: step_number")
    return measured(
        rows,
        len(with_ids),
        c_s,
        d_s,
        agents=len(starts),
        rows_not_consecutive=len(odd),
        without_ids_bytes=len(without),
        without_ids_bits_per_state=8 * len(without) / rows.n,
    )


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ..., length - 1 for each run, concatenated."""
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(int(lengths.sum())) - starts


def _decode_keys(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``keys_anchor``'s packing: per-row agent ids and steps."""
    head = np.frombuffer(raw, np.int64, 7)
    text_len, runs, odd = (int(v) for v in head[:3])
    widths = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
    at = head.nbytes
    ids = raw[at : at + text_len].decode().split("\0")
    at += text_len
    arrays = []
    for count, width in zip((runs, runs, odd, odd), head[3:].tolist(), strict=True):
        arrays.append(np.frombuffer(raw, widths[width], count, at).astype(np.int64))
        at += count * width
    first_steps, lengths, odd_rows, odd_steps = arrays
    agent_ids = np.empty(int(lengths.sum()), dtype=object)
    agent_ids[:] = np.repeat(np.array(ids, dtype=object), lengths)
    steps = np.repeat(first_steps, lengths) + _offsets(lengths)
    steps[odd_rows] = odd_steps
    return agent_ids, steps


# ---------------------------------------------------------------------- all of them
ANCHORS: dict[str, Callable[[StateRows], dict[str, Any]]] = {
    "zstd_grid": zstd_grid_anchor,
    "openzl": openzl_anchor,
    "sz3": sz3_anchor,
    "pcodec": pcodec_anchor,
    "zfp": zfp_anchor,
    "keys": keys_anchor,
}


def measure_anchors(rows: StateRows, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every anchor on ``rows``; a missing package gives ``{"skipped": reason}`` and one line."""
    out: dict[str, Any] = {"states": rows.n, "agents": int(first_of_agent(rows.agent_ids).sum())}
    for name, anchor in ANCHORS.items():
        t = time.perf_counter()
        try:
            out[name] = anchor(rows)
        except AnchorSkipped as e:
            say(f"  {name}: skipped, {e}")
            out[name] = {"skipped": str(e)}
            continue
        out[name]["measure_seconds"] = time.perf_counter() - t
    return out
