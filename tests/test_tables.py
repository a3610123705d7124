"""Every table of a database through the table coder: exact round trips, hostile blocks, verify.

Unit tests of the pieces with numbers computed by hand, a database made here with every SQLite
storage class and schema object kind, crafted blocks, and (when present) the shared AgentFarm
databases.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import zstandard

from meaning_transform.codec import backend
from meaning_transform.codec.block_io import Sink, Source
from meaning_transform.codec.compare import DatabasesDiffer, compare_databases
from meaning_transform.codec.conditional import put_conditional, take_conditional
from meaning_transform.codec.conditioned import OWN, put_column
from meaning_transform.codec.context import Context, Factors
from meaning_transform.codec.database import encode_tables, restore_database
from meaning_transform.codec.json_columns import join, scalar_text, split
from meaning_transform.codec.lags import previous_rows
from meaning_transform.codec.numbers import (
    _decimal,
    put_ints,
    put_reals,
    take_ints,
    take_reals,
    unzigzag,
    zigzag,
)
from meaning_transform.codec.schema_objects import (
    SchemaObject,
    carried_tables,
    database_settings,
    schema_objects,
)
from meaning_transform.codec.sql_guard import UnsafeSQL
from meaning_transform.codec.state_keys import decode_state_keys, encode_state_keys
from meaning_transform.codec.strings import put_byte_strings
from meaning_transform.codec.table_rows import table_layout
from meaning_transform.codec.tables import FORMAT, decode_block, encode_table, flat_tolerances
from meaning_transform.codec.typed import T_JSON, T_STRINGS, TEXT
from meaning_transform.codec.wire import BlockError, ByteReader, ByteWriter
from meaning_transform.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


# ---------------------------------------------------------------- pieces, by hand
def test_varints_and_zigzag_by_hand():
    w = ByteWriter()
    w.uint(300)
    w.sint(-3)
    assert w.getvalue() == b"\xac\x02\x05"
    r = ByteReader(w.getvalue(), "x")
    assert (r.uint(1000), r.sint(10)) == (300, -3)
    assert zigzag(np.array([0, -1, 1, -2])).tolist() == [0, 1, 2, 3]
    assert unzigzag(zigzag(np.array([-(2**63), 2**63 - 1]))).tolist() == [-(2**63), 2**63 - 1]
    with pytest.raises(BlockError, match="larger than 299"):
        ByteReader(b"\xac\x02", "x").uint(299)


def test_unsigned_arrays_are_byte_planes_of_the_smallest_width():
    sink = Sink()
    sink.uints(np.array([1, 256]))
    assert sink.plan.getvalue() == b"\x02" and sink.streams == [b"\x01\x00\x00\x01"]
    sink = Sink()
    sink.uints(np.zeros(5))
    assert sink.plan.getvalue() == b"\x00" and sink.streams == []  # a constant costs nothing


def test_short_decimals_are_integers_and_float_noise_a_few_units_in_the_last_place():
    q, off = _decimal(np.array([14.85, 4.549999999999999, 0.1 + 0.2]), np.array([2, 2, 1]))
    assert q.tolist() == [1485, 455, 3]
    assert off[0] == 0  # 1485 / 100 is 14.85 exactly
    assert 0 < abs(off[1]) < 4 and 0 < abs(off[2]) < 4  # noise of a sum, not a new number
    x = np.array([14.85, -0.0, 0.0, 1e300, -np.inf, 5e-324, np.nan, 4.549999999999999])
    sink = Sink()
    put_reals(sink, x)
    back = take_reals(Source(sink.tobytes(), "t"), len(x))
    assert back.view("<u8").tolist() == x.view("<u8").tolist()  # bit for bit, -0.0 and nan too


def test_integers_keep_every_int64():
    v = np.array([0, 1, -1, 2**63 - 1, -(2**63), 5, 5, 5])
    sink = Sink()
    put_ints(sink, v)
    assert take_ints(Source(sink.tobytes(), "t"), len(v)).tolist() == v.tolist()


def test_json_templates_by_hand():
    text = '{"a": 10, "b": [1.5, -0.0, 1e-7, "x\\"y"], "c": {"d": null, "e": true}}'
    frags, values = split(text, True)
    assert values == [10, 1.5, -0.0, 'x"y', None, True]
    assert frags[0] == '{"a": ' and ", 1e-7, " in frags  # 1e-07 would not give "1e-7" back
    assert join(frags, [scalar_text(v, True) for v in values]) == text
    assert split('{ "k" :  2.50 }', True) == (('{ "k" :  2.50 }',), [])  # 2.5 is not "2.50"


def test_conditional_coding_costs_nothing_where_the_context_decides():
    ctx = np.array([0, 1, 0, 1, 2, 2] * 50)
    symbols = np.array([3, 1, 3, 1, 0, 2] * 50)  # context 0 and 1 decide, 2 does not
    sink = Sink()
    put_conditional(sink, symbols, ctx, 4)
    words = sink.streams[-1]
    assert len(words) <= 4 * (100 // 32 + 3)  # ~1 bit per row of context 2 only
    assert take_conditional(Source(sink.tobytes(), "t"), ctx, 4).tolist() == symbols.tolist()


def test_previous_rows_of_the_same_entity():
    assert previous_rows(np.array([5, 7, 5, 5, 7])).tolist() == [-1, -1, 0, 2, 1]


def test_factors_tell_classes_and_float_bits_apart():
    f = Factors([1, 1.0, -0.0, 0.0, True, "1", b"1", None, 1])
    assert f.codes.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0]
    g = Factors([1.0, 1]).subset(np.array([1]))
    assert g.codes.tolist() == [0] and g.firsts == [1]


def test_tolerances_flat_or_nested_and_checked():
    assert flat_tolerances({"t": {"c": 0.5}, "u.d": 1}) == {"t.c": 0.5, "u.d": 1.0}
    for bad in ({"t.c": 0}, {"t.c": float("nan")}, {"tc": 1.0}, {"t.c": True}):
        with pytest.raises(ConfigError):
            flat_tolerances(bad)


# ---------------------------------------------------------------- a database with everything
DETAILS = [
    '{"amount": 10, "before": 4.85, "after": 14.85}',
    '{"amount": 2.0, "before": 4.549999999999999, "after": 6.549999999999999}',
    '{"target": "agent_7", "damage": 1e-7, "pos": [3, -4]}',
    '{ "odd" :  1 ,"spacing":[ ] }',
    '{"unicode": "h\\u00e9llo", "raw": "héllo", "nested": {"a": {"b": [1, {"c": null}]}}}',
    '{"big": 123456789012345678901234567890, "neg0": -0.0, "huge": 1.7976931348623157e+308}',
    '{"dup": 1, "dup": 2}',
    "not json at all",
    "[1, 2, 3]",
]


def make_db(path: Path, n: int = 300) -> None:
    """A database with every storage class, NULLs, every kind of schema object, JSON details
    with varying keys and odd formatting, and SQLite's own tables."""
    with closing(sqlite3.connect(path)) as con:
        con.executescript(
            """
            PRAGMA user_version = 7;
            PRAGMA application_id = 1234;
            CREATE TABLE actions (
                action_id INTEGER PRIMARY KEY, agent_id TEXT NOT NULL, step INTEGER,
                kind TEXT, reward FLOAT, details TEXT, weight INTEGER, anything);
            CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, msg TEXT);
            CREATE TABLE pairs (a TEXT, b INTEGER, v, PRIMARY KEY (a, b)) WITHOUT ROWID;
            CREATE TABLE "odd ""name"" t" ("col one" REAL, x BLOB,
                total REAL GENERATED ALWAYS AS ("col one" * 2) VIRTUAL);
            CREATE TABLE empty (x);
            CREATE TABLE named_rowid (rowid TEXT, v);
            CREATE TABLE shadowed (rowid TEXT, oid TEXT, _rowid_ TEXT);
            CREATE INDEX actions_agent ON actions (agent_id, step);
            CREATE INDEX actions_expr ON actions (lower(kind), step * 2);
            CREATE INDEX actions_part ON actions (reward) WHERE reward > 0;
            CREATE VIEW rewarded AS SELECT agent_id, sum(reward) FROM actions GROUP BY agent_id;
            CREATE TRIGGER log_actions AFTER INSERT ON actions
                BEGIN INSERT INTO log (msg) VALUES ('action ' || new.action_id); END;
            """
        )
        rng = random.Random(0)
        rows = []
        for i in range(n):
            kind = ["move", "gather", "attack"][i % 3]
            anything = [None, 7, 2.5, "text", b"\x00\xff", -0.0, 2**63 - 1, -(2**63), "", b""][
                i % 10
            ]
            rows.append(
                (
                    i + 1,
                    f"agent_{i % 7}",
                    i // 7,
                    kind,
                    round(rng.uniform(-1, 1), 3) if i % 11 else None,
                    DETAILS[i % len(DETAILS)],
                    2.5 if i % 13 == 0 else i,  # a REAL in an INTEGER column
                    anything,
                )
            )
        con.executemany("INSERT INTO actions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        con.execute("UPDATE actions SET reward = 3 WHERE action_id = 2")  # INTEGER into FLOAT
        con.execute("DELETE FROM log WHERE id > 290")  # sqlite_sequence keeps 300
        con.execute("DELETE FROM actions WHERE action_id IN (5, 6)")  # rowid gaps
        con.executemany(
            "INSERT INTO pairs VALUES (?, ?, ?)", [(f"k{i % 5}", i, i * 0.5) for i in range(40)]
        )
        con.executemany(
            'INSERT INTO "odd ""name"" t" ("col one", x) VALUES (?, ?)',
            [(0.1 * i, bytes([i % 256]) * (i % 5)) for i in range(50)],
        )
        con.execute("INSERT INTO log (msg) VALUES (CAST(X'66ff6f' AS TEXT))")  # not UTF-8
        con.executemany(
            "INSERT INTO named_rowid (oid, rowid, v) VALUES (?, ?, ?)",
            [(10 * i + 3, f"r{i}", i) for i in range(20)],  # rowids 3, 13, ... behind "oid"
        )
        con.executemany("INSERT INTO shadowed VALUES (?, ?, ?)", [("a", "b", "c")] * 3)
        con.execute("ANALYZE")
        con.commit()


def _roundtrip(src_path: Path, out_path: Path, tolerances=None) -> dict[str, int]:
    with closing(sqlite3.connect(src_path)) as src:
        objects = schema_objects(src)
        settings = database_settings(src)
        blocks = list(encode_tables(src, objects, tolerances, block_rows=64))
    # the header travels as JSON: objects come back through from_dict
    objects = [SchemaObject.from_dict(json.loads(json.dumps(o.to_dict())), "t") for o in objects]
    with closing(sqlite3.connect(out_path)) as out:
        rows = restore_database(out, objects, settings, iter(blocks), "test.mtc")
        out.commit()
    return rows


@pytest.fixture(scope="module")
def everything(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tables")
    make_db(d / "src.db")
    _roundtrip(d / "src.db", d / "out.db")
    return d / "src.db", d / "out.db"


def test_every_table_row_and_object_comes_back_exactly(everything):
    src_path, out_path = everything
    with closing(sqlite3.connect(src_path)) as a, closing(sqlite3.connect(out_path)) as b:
        counts = compare_databases(a, b)
        assert counts["actions"] == 298 and counts["sqlite_sequence"] == 1
        assert {"sqlite_stat1", "pairs", 'odd "name" t', "empty", "shadowed"} <= set(counts)
        assert b.execute("SELECT oid FROM named_rowid LIMIT 2").fetchall() == [(3,), (13,)]
        # independently of compare_databases: every cell's class and bytes, in rowid order
        for table in ("actions", "log", "sqlite_sequence", 'odd "name" t'):
            cols = [r[1] for r in a.execute("SELECT * FROM pragma_table_xinfo(?)", (table,))]
            q = '"' + table.replace('"', '""') + '"'
            sql = (
                "SELECT rowid, "
                + ", ".join(f'typeof("{c}"), hex("{c}"), "{c}"' for c in cols)
                + f" FROM {q} ORDER BY rowid"
            )
            a.text_factory = b.text_factory = bytes
            assert a.execute(sql).fetchall() == b.execute(sql).fetchall(), table
        for con in (a, b):
            con.text_factory = str
        assert b.execute("SELECT seq FROM sqlite_sequence").fetchall() == [(301,)]
        assert b.execute("SELECT typeof(reward) FROM actions WHERE action_id = 2").fetchone() == (
            "real",
        )
        assert b.execute("SELECT typeof(weight) FROM actions WHERE action_id = 1").fetchone() == (
            "real",
        )
        assert b.execute("PRAGMA user_version").fetchone() == (7,)
        assert b.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_triggers_do_not_fire_while_rows_are_restored(everything):
    _, out_path = everything
    with closing(sqlite3.connect(out_path)) as b:
        # log has its own 290 rows + 1; none were added by the trigger during the restore
        assert b.execute("SELECT count(*) FROM log").fetchone() == (291,)
        b.execute("INSERT INTO actions (agent_id) VALUES ('x')")  # the trigger works after
        assert b.execute("SELECT count(*) FROM log").fetchone() == (292,)


def test_verify_names_the_first_changed_cell(everything, tmp_path):
    src_path, out_path = everything
    changed = tmp_path / "changed.db"
    changed.write_bytes(out_path.read_bytes())
    with closing(sqlite3.connect(src_path)) as a, closing(sqlite3.connect(changed)) as b:
        b.execute("UPDATE actions SET details = details || ' ' WHERE action_id = 40")
        b.commit()
        with pytest.raises(DatabasesDiffer, match=r"table 'actions', column 'details', row 38"):
            compare_databases(a, b)
        b.execute(
            "UPDATE actions SET details = substr(details, 1, length(details) - 1) "
            "WHERE action_id = 40"
        )
        b.execute("UPDATE actions SET anything = 0.0 WHERE anything = 0.0")  # -0.0 -> 0.0
        b.commit()
        with pytest.raises(DatabasesDiffer, match=r"column 'anything'"):
            compare_databases(a, b)


def test_a_declared_tolerance_puts_a_column_on_its_grid(everything, tmp_path):
    src_path, _ = everything
    out = tmp_path / "lossy.db"
    _roundtrip(src_path, out, {"actions": {"reward": 0.05}})
    with closing(sqlite3.connect(src_path)) as a, closing(sqlite3.connect(out)) as b:
        compare_databases(a, b, {"actions.reward": 0.05})
        with pytest.raises(DatabasesDiffer, match="column 'reward'"):
            compare_databases(a, b)
        pairs = a.execute("SELECT rowid, reward FROM actions WHERE reward IS NOT NULL").fetchall()
        lossy = dict(b.execute("SELECT rowid, reward FROM actions WHERE reward IS NOT NULL"))
        on_grid = [abs(lossy[r] / 0.1 - round(lossy[r] / 0.1)) < 1e-9 for r, _ in pairs]
        exact = [lossy[r] == x for r, x in pairs]
        # on the grid of 2 x tolerance, or (a value whose grid point is a hair too far) exact
        assert all(g or e for g, e in zip(on_grid, exact, strict=True)) and sum(on_grid) > 200


def test_what_cannot_be_carried_is_refused_in_one_line(tmp_path):
    bad = SchemaObject("table", "t", "t", "CREATE TABLE t (x); VACUUM INTO '/tmp/pwn.db'")
    with closing(sqlite3.connect(tmp_path / "out.db")) as out, pytest.raises(UnsafeSQL):
        restore_database(out, [bad], database_settings(out), iter(()), "crafted.mtc")
    with pytest.raises(DataError, match="kind"):
        SchemaObject.from_dict({"kind": "pragma", "name": "x", "table": "x", "sql": ""}, "f")
    with closing(sqlite3.connect(":memory:")) as con:
        con.execute("CREATE VIRTUAL TABLE v USING rtree(id, a, b)")
        with pytest.raises(DataError, match="virtual table"):
            schema_objects(con)


# ---------------------------------------------------------------- hostile blocks
@pytest.fixture(scope="module")
def a_block(everything) -> tuple[bytes, object]:
    src_path, _ = everything
    with closing(sqlite3.connect(src_path)) as con:
        layout = table_layout(con, "actions")
        return next(iter(encode_table(con, "actions", block_rows=128))), layout


def _one_line_error(data: bytes, layout) -> str | None:
    try:
        decode_block(data, layout, "crafted block")
    except DataError as e:
        assert "\n" not in str(e) and str(e).startswith("crafted block")
        return str(e)
    return None


def test_a_huge_claimed_length_is_refused_before_allocating(a_block):
    _, layout = a_block
    w = ByteWriter()
    w.uint(1)
    w.uint((1 << 40) << 3 | backend.ZSTD)  # one stream of a TiB
    assert "larger than" in _one_line_error(w.getvalue() + bytes(8), layout)


def test_a_decompression_bomb_is_refused(a_block):
    _, layout = a_block
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(200 << 20))  # 200 MB of zeros
    w = ByteWriter()
    w.uint(1)
    w.uint((200 << 20) << 3 | backend.ZSTD)
    w.uint(backend.STORED)
    w.uint(0)
    w.uint(len(bomb))
    assert "larger than" in _one_line_error(w.getvalue() + bomb + b"\0", layout)
    # the same bytes claiming a small size: decompression stops at that size
    w = ByteWriter()
    w.uint(1)
    w.uint(1000 << 3 | backend.ZSTD)
    w.uint(backend.STORED)
    w.uint(0)
    w.uint(len(bomb))
    assert "does not decompress" in _one_line_error(w.getvalue() + bomb + b"\0", layout)


def test_a_json_template_repeated_into_gigabytes_is_refused():
    """A crafted block whose one JSON template (a 60 KB fragment) is every row of 65,536:
    4 GB of text if it were joined; refused before."""
    n = 1 << 16
    with closing(sqlite3.connect(":memory:")) as con:
        con.execute("CREATE TABLE t (x TEXT)")
        layout = table_layout(con, "t")
    sink = Sink()
    for v in (FORMAT, n, 1, 1):  # format, rows, columns, rowids
        sink.plan.uint(v)
    put_ints(sink, np.arange(1, n + 1))
    context = Context(n)
    context.add(list(range(1, n + 1)))
    for v in (0, 0, OWN, 1 << TEXT, T_JSON, 1, 1, 0):  # order, exact, own, text, JSON, 1 template
        sink.plan.uint(v)
    sink.plan.text("x" * 60_000)
    put_column(sink, [1] * n, None, context, json_ok=False)  # every row: template 1
    sink.plan.uint(T_STRINGS)
    put_byte_strings(sink, [])  # no row kept as text
    error = _one_line_error(sink.tobytes(), layout)
    assert error and "bytes of text in one block" in error


def test_crafted_blocks_stay_within_memory(tmp_path):
    """Decoding the crafted blocks above in a fresh process stays far below 1 GiB: its own peak
    resident memory (``VmHWM``; ``ru_maxrss`` would include the forking parent's)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc/self/status to read the peak resident memory from")
    script = tmp_path / "decode.py"
    script.write_text(
        "import re, sqlite3, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import test_tables as t\n"
        "t.test_a_json_template_repeated_into_gigabytes_is_refused()\n"
        "con = sqlite3.connect(':memory:')\n"
        "con.execute('CREATE TABLE t (x)')\n"
        "layout = t.table_layout(con, 't')\n"
        "bomb = t.zstandard.ZstdCompressor(level=3).compress(bytes(200 << 20))\n"
        "for claim in (200 << 20, 1 << 30, 1000):\n"
        "    w = t.ByteWriter()\n"
        "    for v in (1, claim << 3 | t.backend.ZSTD, t.backend.STORED, 0, len(bomb)):\n"
        "        w.uint(v)\n"
        "    assert t._one_line_error(w.getvalue() + bomb + bytes(1), layout)\n"
        "status = open('/proc/self/status').read()\n"
        "print(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, str(script), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=120, env=env, check=True,
    )  # fmt: skip
    assert int(out.stdout.split()[-1]) < 512 * 1024  # KiB


def test_truncated_and_garbage_blocks_give_one_line(a_block):
    data, layout = a_block
    for cut in (0, 1, 5, len(data) // 2, len(data) - 1):
        assert _one_line_error(data[:cut], layout)
    rng = random.Random(1)
    assert _one_line_error(bytes(rng.randrange(256) for _ in range(4000)), layout)


def test_mutated_blocks_decode_exactly_or_fail_in_one_line(a_block):
    """Single-byte mutations of a real block's decompressed plan and streams (behind the
    compressors, where a CRC would not catch them): each decodes or gives one DataError."""
    data, layout = a_block
    streams = backend.unpack(data, "t")
    rng = random.Random(2)
    outcomes = {"error": 0, "decoded": 0}
    for _ in range(300):
        i = rng.randrange(len(streams))
        s = bytearray(streams[i])
        if not s:
            continue
        s[rng.randrange(len(s))] = rng.randrange(256)
        mutated = backend.pack([*streams[:i], bytes(s), *streams[i + 1 :]])
        outcomes["error" if _one_line_error(mutated, layout) else "decoded"] += 1
    assert outcomes["error"] > 50


def test_backend_bounds_by_hand():
    raw = bytes(10_000)
    method, packed = backend.compress(raw)
    assert method != backend.STORED and len(packed) < 100
    assert backend.decompress(method, packed, 10_000, "t") == raw
    with pytest.raises(BlockError, match="decompress"):
        backend.decompress(method, packed, 9_999, "t")
    # a block that would expand more than FLOOR + RATIO x its size is padded by the encoder
    block = backend.pack([bytes(backend.FLOOR + 300 * backend.RATIO)])
    assert backend.unpack(block, "t") == [bytes(backend.FLOOR + 300 * backend.RATIO)]
    assert len(block) >= 300


# ---------------------------------------------------------------- agent_states keys
def _chunk() -> tuple[dict, dict, dict]:
    agents = ["agent_b", "agent_a", "agent_c"]  # the agents table's (birth) order
    keys = {"agent_id": [], "step_number": [], "simulation_id": [], "id": []}
    for a, first, count in (("agent_a", 3, 40), ("agent_b", 0, 100), ("agent_c", 50, 7)):
        for s in range(first, first + count):
            keys["agent_id"].append(a)
            keys["step_number"].append(s)
            keys["simulation_id"].append("sim_1")
            keys["id"].append(f"sim_1:{a}-{s}")
    keys["id"][5] = "custom"
    keys["step_number"][60] = 999
    n = len(keys["id"])
    others = {"position_z": [None] * n, "starting_health": [100.0] * n, "null:x": [0] * n}
    return keys, others, {"agent_id": agents, "simulation_id": ["sim_1"]}


def test_state_keys_round_trip_and_cost_little():
    keys, others, known = _chunk()
    blob = encode_state_keys(keys, others, known)
    assert decode_state_keys(blob, len(keys["id"]), known) == (keys, others)
    assert len(blob) < 160  # 147 states; columns.py (zlib of values): 406 bytes
    unknown = encode_state_keys(keys, others)  # ids not known: stored
    assert decode_state_keys(unknown, len(keys["id"])) == (keys, others)


def test_state_keys_refuse_crafted_bytes_in_one_line():
    keys, others, known = _chunk()
    blob = encode_state_keys(keys, others, known)
    with pytest.raises(BlockError, match="not for 10 rows"):
        decode_state_keys(blob, 10, known)
    streams = backend.unpack(blob, "t")
    rng = random.Random(3)
    for _ in range(200):
        i = rng.randrange(len(streams))
        s = bytearray(streams[i])
        if s:
            s[rng.randrange(len(s))] ^= 1 << rng.randrange(8)
        try:
            decode_state_keys(backend.pack([*streams[:i], bytes(s), *streams[i + 1 :]]), 147, known)
        except DataError as e:
            assert "\n" not in str(e)


# ---------------------------------------------------------------- the shared databases
@pytest.mark.slow
@pytest.mark.parametrize("name", ["agentfarm_run1.db", "agentfarm_run3_moving.db"])
def test_shared_databases_round_trip(name, tmp_path):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"shared database not present at {path}")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as src:
        objects = schema_objects(src)
        settings = database_settings(src)
        assert "agent_actions" in carried_tables(objects)
        blocks = list(encode_tables(src, objects, skip=("agent_states",)))
        with closing(sqlite3.connect(tmp_path / "out.db")) as out:
            restore_database(out, objects, settings, iter(blocks), name)
            out.commit()
            counts = compare_databases(src, out, skip=("agent_states",))
            assert counts["agent_actions"] > 30_000
            assert out.execute("SELECT count(*) FROM agent_states").fetchone() == (0,)
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as src:
        states = src.execute("SELECT count(*) FROM agent_states").fetchone()[0]
    bits = 8 * sum(len(b) for t, b in blocks if t == "agent_actions") / states
    assert bits < 35  # measured 25.9 (run1), 29.2 (run3); Parquet+zstd-19: 119, 137
