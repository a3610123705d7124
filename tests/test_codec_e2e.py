"""End to end: train a tiny lossless model, compress a whole simulation.db, decompress, verify.

The restored database is checked by an independent comparison (both files read with sqlite3),
not by the codec's own verify. Bad files and bad arguments must be one line, exit code 2, and
leave nothing on disk.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
import torch
from codec_helpers import assert_same_meaning, train_lossless
from conftest import REPO

from meaning_transform.codec.__main__ import main as codec_main
from meaning_transform.codec.container import Reader

pytestmark = pytest.mark.slow  # trains models and runs the codec as a subprocess


def _codec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meaning_transform.codec", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_compress_decompress_verify_as_a_user(tiny, capsys) -> None:
    tmp, db, ckpt = tiny
    out, restored = tmp / "sim.mtc", tmp / "restored.db"
    before = db.read_bytes()
    r = _codec("compress", f"ckpt_path={ckpt}", f"data.path={db}", f"out={out}")
    assert r.returncode == 0, r.stderr
    assert "bits per agent state" in r.stdout and out.stat().st_size < db.stat().st_size / 10
    r = _codec("decompress", f"in={out}", f"out={restored}")
    assert r.returncode == 0, r.stderr
    assert assert_same_meaning(db, restored) == 1500
    assert codec_main(["verify", f"in={out}", f"data.path={db}"]) == 0  # in process: quicker
    assert "verified 2 tables, 1,525 rows" in capsys.readouterr().out
    assert db.read_bytes() == before  # the input is never modified


def test_embedded_model_and_small_chunks(tiny, tmp_path) -> None:
    _, db, ckpt = tiny
    moved = tmp_path / "model.ckpt"
    shutil.copy(ckpt, moved)
    out, restored = tmp_path / "e.mtc", tmp_path / "e.db"
    args = [f"ckpt_path={moved}", f"data.path={db}", f"out={out}"]
    assert codec_main(["compress", *args, "chunk_size=100"]) == 0  # embedded by default
    moved.unlink()  # decompress needs nothing but the file
    assert codec_main(["decompress", f"in={out}", f"out={restored}"]) == 0
    assert assert_same_meaning(db, restored) == 1500


def _one_line_exit_2(capsys, args: list[str], match: str, folder: Path) -> None:
    before = sorted(folder.iterdir())
    assert codec_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert sorted(folder.iterdir()) == before  # nothing left on disk


def test_bad_files_and_inputs_are_one_line_errors(tiny, tmp_path, capsys) -> None:
    _, db, ckpt = tiny
    good = tmp_path / "good.mtc"
    assert codec_main(["compress", f"ckpt_path={ckpt}", f"data.path={db}", f"out={good}"]) == 0
    data = good.read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    out = str(work / "out.db")
    cases = {
        "truncated": (data[: len(data) // 2], "truncated"),
        "corrupted": (data[:-40] + bytes([data[-40] ^ 1]) + data[-39:], "corrupted"),
        "empty": (b"", "bad magic"),
    }
    for name, (content, match) in cases.items():
        bad = tmp_path / f"{name}.mtc"
        bad.write_bytes(content)
        _one_line_exit_2(capsys, ["decompress", f"in={bad}", f"out={out}"], match, work)
    # another model: same architecture, one weight changed
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = next(k for k in state["state_dict"] if k.endswith("weight"))
    state["state_dict"][key] = state["state_dict"][key] + 1
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    by_path = tmp_path / "by_path.mtc"
    assert codec_main(["compress", f"ckpt_path={ckpt}", f"data.path={db}", f"out={by_path}",
                       "embed_model=false"]) == 0  # fmt: skip
    _one_line_exit_2(
        capsys,
        ["decompress", f"in={by_path}", f"out={out}", f"ckpt_path={other}"],
        "another model",
        work,
    )
    _one_line_exit_2(capsys, ["compress", f"ckpt_path={tmp_path}/no.ckpt", f"data.path={db}",
                              f"out={out}"], "no such checkpoint file", work)  # fmt: skip
    _one_line_exit_2(capsys, ["compress", f"ckpt_path={ckpt}", f"data.path={tmp_path}/no.db",
                              f"out={out}"], "file not found", work)  # fmt: skip
    _one_line_exit_2(capsys, ["compress", f"ckpt_path={ckpt}", f"data.path={db}",
                              f"out={work}"], "is a directory", work)  # fmt: skip
    _one_line_exit_2(capsys, ["decompress", f"in={good}", f"out={db}"], "exists", work)
    _one_line_exit_2(capsys, ["decompress", f"in={good}", f"outt={out}"], "no such key", work)
    _one_line_exit_2(capsys, ["squash", f"in={good}"], "first argument", work)
    _one_line_exit_2(
        capsys, ["decompress", f"in={tmp_path}/none.mtc", f"out={out}"], "not found", work
    )


def test_real_db_round_trip(real_db, tmp_path) -> None:
    ckpt = train_lossless(
        tmp_path / "run", "model.context=previous", "data=sqlite", f"data.path={real_db}",
        "data.limit=3000", "trainer.max_epochs=1",
    )  # fmt: skip
    out, restored = tmp_path / "r.mtc", tmp_path / "r.db"
    args = [f"ckpt_path={ckpt}", f"data.path={real_db}", f"out={out}", "chunk_size=8192"]
    assert codec_main(["compress", *args]) == 0
    assert codec_main(["decompress", f"in={out}", f"out={restored}"]) == 0
    assert assert_same_meaning(real_db, restored) == 18758


def test_evaluate_reports_drift_zero_and_exact_coding(tiny) -> None:
    from meaning_transform.evaluate import evaluate_checkpoint

    _, _, ckpt = tiny
    report = evaluate_checkpoint(ckpt, None, "all")  # enough states that 32-bit words are noise
    assert report["metrics"]["drift"] == 0.0
    coding = report["coding"]
    assert (
        coding["exact"]
        and abs(coding["coded_bits_per_state"] / coding["estimated_bits_per_state"] - 1) < 0.01
    )


def test_verify_finds_a_database_that_differs(tiny, tmp_path, capsys) -> None:
    _, db, ckpt = tiny
    out, changed = tmp_path / "v.mtc", tmp_path / "changed.db"
    assert codec_main(["compress", f"ckpt_path={ckpt}", f"data.path={db}", f"out={out}"]) == 0
    shutil.copy(db, changed)
    with closing(sqlite3.connect(changed)) as con:
        con.execute("UPDATE agent_states SET position_x = position_x + 3 WHERE rowid = 7")
        con.commit()
    assert codec_main(["verify", f"in={out}", f"data.path={changed}"]) == 1
    err = capsys.readouterr().err
    expected = "error: verify failed: table 'agent_states', column 'position_x', row 7: value"
    assert err.startswith(expected) and err.count("\n") == 1


def test_mixed_storage_classes_round_trip_exactly(tiny, tmp_path) -> None:
    """agent_states columns whose values have several SQLite storage classes (and a key of
    another class) come back with every value's class."""
    _, db, ckpt = tiny
    mixed = tmp_path / "mixed.db"
    shutil.copy(db, mixed)
    with closing(sqlite3.connect(mixed)) as con:
        con.execute(
            "UPDATE agent_states SET position_z = CASE rowid % 3 WHEN 0 THEN 'z' WHEN 1 THEN 7 "
            "ELSE 1.5 END WHERE rowid > 1400"
        )
        con.execute("UPDATE agent_states SET simulation_id = 12 WHERE rowid = 1450")
        con.commit()
    out, restored = tmp_path / "m.mtc", tmp_path / "m.db"
    args = [f"ckpt_path={ckpt}", f"data.path={mixed}", f"out={out}", "chunk_size=100"]
    assert codec_main(["compress", *args]) == 0
    assert codec_main(["decompress", f"in={out}", f"out={restored}"]) == 0
    assert assert_same_meaning(mixed, restored) == 1500
    sql = "SELECT id, typeof(position_z), position_z, typeof(simulation_id) FROM agent_states"
    with closing(sqlite3.connect(mixed)) as a, closing(sqlite3.connect(restored)) as b:
        assert sorted(a.execute(sql)) == sorted(b.execute(sql))
    assert codec_main(["verify", f"in={out}", f"data.path={mixed}"]) == 0


def quote(name: str) -> str:
    """An SQL identifier (the test's own, not the codec's)."""
    return '"' + name.replace('"', '""') + '"'


def test_every_table_and_object_of_a_database_comes_back(tiny, tmp_path) -> None:
    """A simulation.db with tables the codec knows nothing about (every storage class, NULLs,
    JSON with varying keys, AUTOINCREMENT, WITHOUT ROWID), indexes, a view, a trigger and
    ANALYZE's statistics: decompress gives every object and row back, checked cell by cell
    (value and storage class) by sqlite3 directly, and agent_states keeps its row order."""
    from test_tables import make_db

    _, db, ckpt = tiny
    rich = tmp_path / "rich.db"
    shutil.copy(db, rich)
    make_db(rich)
    with closing(sqlite3.connect(rich)) as con:  # states stored step by step, as AgentFarm does
        con.execute("CREATE TABLE s2 AS SELECT * FROM agent_states ORDER BY step_number, agent_id")
        con.execute("DELETE FROM agent_states")
        con.execute("INSERT INTO agent_states SELECT * FROM s2")
        con.execute("DROP TABLE s2")
        con.commit()
    out, restored = tmp_path / "rich.mtc", tmp_path / "restored.db"
    assert codec_main(["compress", f"ckpt_path={ckpt}", f"data.path={rich}", f"out={out}"]) == 0
    assert codec_main(["decompress", f"in={out}", f"out={restored}"]) == 0
    with closing(sqlite3.connect(rich)) as a, closing(sqlite3.connect(restored)) as b:
        a.text_factory = b.text_factory = bytes  # a text value that is not UTF-8 stays bytes
        master = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        assert a.execute(master).fetchall() == b.execute(master).fetchall()
        tables = [
            r[0].decode() for r in a.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for table in tables:
            if table == "agent_states":
                continue
            cols = [
                r[1].decode() for r in a.execute("SELECT * FROM pragma_table_info(?)", (table,))
            ]
            q = [quote(c) for c in cols]
            sql = f"SELECT {', '.join(f'typeof({c}), {c}' for c in q)} FROM {quote(table)}"
            assert sorted(map(repr, a.execute(sql))) == sorted(map(repr, b.execute(sql))), table
        ids = "SELECT rowid, id, agent_id, step_number FROM agent_states ORDER BY rowid"
        assert a.execute(ids).fetchall() == b.execute(ids).fetchall()
    assert assert_same_meaning(rich, restored) == 1500
    assert codec_main(["verify", f"in={out}", f"data.path={rich}"]) == 0


def test_a_database_written_during_compress_is_read_as_one_snapshot(tiny, tmp_path, monkeypatch):
    """Rows another process commits while compress reads (WAL mode, a writer attached) are
    not half seen: the file holds the database as it was when compress began reading."""
    import meaning_transform.codec.commands as commands

    _, db, ckpt = tiny
    live = tmp_path / "live.db"
    shutil.copy(db, live)
    writer = sqlite3.connect(live)
    writer.execute("PRAGMA journal_mode = WAL")
    counted = commands.count_states

    def count_then_write(con):  # another process commits right after the count
        n = counted(con)
        cols = [r[1] for r in writer.execute("PRAGMA table_info(agent_states)")]
        picked = [f"{c} || 'x'" if c in ("id", "agent_id") else c for c in cols]
        writer.execute(
            f"INSERT INTO agent_states SELECT {', '.join(picked)} FROM agent_states LIMIT 50"
        )
        writer.commit()
        return n

    monkeypatch.setattr(commands, "count_states", count_then_write)
    out, restored = tmp_path / "s.mtc", tmp_path / "s.db"
    assert codec_main(["compress", f"ckpt_path={ckpt}", f"data.path={live}", f"out={out}"]) == 0
    writer.close()
    assert codec_main(["decompress", f"in={out}", f"out={restored}"]) == 0
    with closing(sqlite3.connect(restored)) as con:
        assert con.execute("SELECT COUNT(*) FROM agent_states").fetchone()[0] == 1500
    assert not list(tmp_path.glob(".*.tmp"))


def test_kill_9_during_compress_leaves_no_file_and_a_second_try_works(tiny, tmp_path):
    import os
    import signal
    import time

    _, db, ckpt = tiny
    out = tmp_path / "k.mtc"
    args = ["compress", f"ckpt_path={ckpt}", f"data.path={db}", f"out={out}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "meaning_transform.codec", *args, "chunk_size=1"]
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".k.mtc.*")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "compress finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not out.exists()  # no partial output under the name a user would open
    assert codec_main(args) == 0  # the second try removes the killed writer's temp file
    assert [p.name for p in tmp_path.iterdir()] == ["k.mtc"]


def test_coder_fit_trains_within_its_budget_and_carries_the_model(tiny, tmp_path, capsys) -> None:
    """``coder=fit``: a lossless history model trained on the database itself for at most
    ``fit_seconds``, embedded in the file (which then decodes with nothing else)."""
    _, db, _ = tiny
    out = tmp_path / "fit.mtc"
    assert codec_main(["compress", str(db), str(out), "coder=fit", "fit_seconds=2"]) == 0
    printed = capsys.readouterr().out
    assert "model fitted on sim.db" in printed and "(in the file)" in printed, printed
    with open(out, "rb") as fh:
        reader = Reader(fh, str(out))
        assert reader.header["model"]["source"] == "embedded" and len(reader.model) > 1000
    assert codec_main(["verify", f"in={out}", f"data.path={db}"]) == 0


def test_coder_packaged_names_the_model_by_hash_and_carries_no_bytes(
    tiny, tmp_path, monkeypatch, capsys
) -> None:
    """``coder=packaged`` with a model shipped in the package (a folder standing in for
    ``codec/packaged/``): 0 model bytes in the file, decoded by the hash the header names; none
    shipped that fits the database is one line."""
    from meaning_transform.codec import model as codec_model

    _, db, ckpt = tiny
    out = tmp_path / "p.mtc"
    monkeypatch.setattr(codec_model, "PACKAGED", tmp_path / "none")
    _one_line_exit_2(capsys, ["compress", str(db), str(out), "coder=packaged"],
                     "no packaged model codes", tmp_path)  # fmt: skip
    coding = codec_model.from_checkpoint(str(ckpt), (), True)
    shipped = tmp_path / "packaged"
    shipped.mkdir()
    sha = coding.model.sha256
    (shipped / f"{sha}.mtim").write_bytes(coding.model.to_bytes())
    (shipped / f"{sha}.mtie").write_bytes(coding.encoder.to_bytes())
    entry = {"name": "tiny", "sha256": sha, "schema": coding.schema.to_dict()}
    (shipped / "index.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setattr(codec_model, "PACKAGED", shipped)
    assert codec_main(["compress", str(db), str(out), "coder=packaged"]) == 0
    assert "packaged model tiny (in the package), 0 bytes in the file" in capsys.readouterr().out
    with open(out, "rb") as fh:
        header = Reader(fh, str(out)).header["model"]
    assert header == {"integer_sha256": sha, "source": "packaged"}
    assert codec_main(["verify", f"in={out}", f"data.path={db}"]) == 0
