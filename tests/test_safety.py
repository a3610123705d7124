"""Safety and robustness (issue 10): checkpoints cannot run code, runs cannot collide or escape
outputs/, bad command lines and faults are one line; each test failed before its fix."""

from __future__ import annotations

import csv
import io
import os
import pickle
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from agentfarm_db import write_agentfarm_db
from conftest import REPO, TINY, TINY_MODEL, train_cli
from hydra.core.global_hydra import GlobalHydra

from meaning_transform.api import load_config
from meaning_transform.assemble import resolve_output_dir
from meaning_transform.callbacks.checkpoint import AtomicCheckpointIO
from meaning_transform.cli import check_args
from meaning_transform.codec import backend
from meaning_transform.errors import CheckpointError, ConfigError
from meaning_transform.evaluate import main as evaluate_main
from meaning_transform.training import run

pytestmark = pytest.mark.slow

#: a 1-epoch in-process run with nothing optional
QUICK = [*TINY, "trainer.max_epochs=1", "logger=none", "test=false"]


class Payload:
    """Pickles as ``os.system("touch <marker>")``: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make_evil(folder: Path, kind: str) -> tuple[Path, Path]:
    """(a malicious checkpoint in torch's zip format or as a raw pickle, its marker file)."""
    marker = folder / f"pwned_{kind}"
    path = folder / f"evil_{kind}.ckpt"
    content = {"state_dict": {}, "epoch": 0, "hyper_parameters": Payload(marker)}
    if kind == "zip":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=2))
    return path, marker


@pytest.fixture(params=["zip", "raw"])
def evil_ckpt(request, tmp_path) -> tuple[Path, Path]:
    """Both kinds of malicious checkpoint."""
    return make_evil(tmp_path, request.param)


def one_error_line(stderr: str) -> str:
    """The single ``error:`` line of stderr (asserting there is exactly one, no traceback)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


# ---------------------------------------------------------------- 1: checkpoints cannot run code
def test_malicious_checkpoint_never_runs(evil_ckpt, tmp_path, capsys):
    path, marker = evil_ckpt
    for key in ("ckpt_path", "init_from"):
        cfg = load_config([*QUICK, f"{key}={path}", f"paths.output_dir={tmp_path / key}"])
        with pytest.raises(CheckpointError, match="refused|cannot be read") as err:
            run(cfg)
        assert "\n" not in str(err.value)
    assert evaluate_main([f"ckpt_path={path}"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError):  # what Trainer.fit/test(ckpt_path=...) load through
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_malicious_checkpoint_through_train_py(tmp_path):
    """The CLI end to end (both formats go through the loader tested in-process above)."""
    path, marker = make_evil(tmp_path, "zip")
    proc = train_cli(*QUICK, f"ckpt_path={path}", f"paths.log_dir={tmp_path / 'out'}")
    assert proc.returncode == 2
    assert str(path) in one_error_line(proc.stderr)
    assert not marker.exists()


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "random.ckpt"
    path.write_bytes(bytes(range(256)) * 40)
    cfg = load_config([*QUICK, f"ckpt_path={path}", f"paths.output_dir={tmp_path / 'r'}"])
    with pytest.raises(CheckpointError, match=r"cannot be read \(truncated, not a checkpoint"):
        run(cfg)


# ---------------------------------------------------------------- 2, 4: the command line
@pytest.mark.parametrize(
    "args, expected",
    [
        (["experiment_name=.."], "experiment_name='..' is invalid: expected one folder name"),
        (["experiment_name=../../x"], "experiment_name='../../x' is invalid"),
        (["-m", "experiment_name=a,.."], "experiment_name='..' is invalid"),
        (
            ["compression=foo"],
            "compression=foo: no such option; choices: entropy, lossless, none, vq",
        ),
        (["optimizer=sgd"], "optimizer=sgd: no such option; choices: adam, adamw"),
        (["data.batchsize=64"], "data.batchsize=64: no such key; did you mean data.batch_size?"),
        (["--experiment", "x"], "--experiment is not an option of train.py: settings are "),
        (
            ["-m", "compression=vq,foo"],
            "compression=foo: no such option; choices: entropy, lossless, none",
        ),
    ],
)
def test_bad_command_line_is_one_line_and_writes_nothing(args, expected, tmp_path):
    """Checked before Hydra creates a folder: not even .hydra/ or train.log appear."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args, f"paths.log_dir={tmp_path}/outputs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [proc.stderr.strip()]  # one line, nothing else
    assert expected in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_evaluate_bad_group_and_bad_database_are_one_line(tmp_path, capsys):
    assert evaluate_main(["ckpt_path=x.ckpt", "data=foo"]) == 2
    assert (
        capsys.readouterr().err == "error: data=foo: no such option; choices: sqlite, synthetic\n"
    )


# ---------------------------------------------------------------- 3: unique run directories
def test_runs_never_share_a_directory(tmp_path):
    """Folders for the next 30 s exist already (as if other runs took them): two runs started at
    once each get a new one of their own."""
    exp = tmp_path / "same"
    now = datetime.now()
    taken = {(now + timedelta(seconds=s)).strftime("%Y-%m-%d_%H-%M-%S") for s in range(30)}
    for name in taken:
        (exp / name).mkdir(parents=True)
    args = [*TINY_MODEL, "data.num_states=300", "data.num_agents=15", "trainer.max_epochs=1"]
    args += ["logger=none", "test=false", "experiment_name=same"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "train.py"),
                *args,
                f"paths.log_dir={tmp_path}",
                f"seed={s}",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    assert all(not any((exp / name).iterdir()) for name in taken)
    new = sorted(p for p in exp.iterdir() if p.name not in taken)
    assert len(new) == 2 and all(p.name.rsplit("_", 1)[0] in taken for p in new)
    seeds = {(p / "config.yaml").read_text().split("seed: ")[1].split()[0] for p in new}
    assert seeds == {"1", "2"}


def test_api_runs_in_the_same_second_get_their_own_directory(tmp_path):
    cfg = load_config([f"paths.log_dir={tmp_path}", "experiment_name=api"])
    first, second = resolve_output_dir(cfg), resolve_output_dir(cfg)
    assert first != second and first.is_dir() and second.is_dir()


# ---------------------------------------------------------------- 6: faults are one line
def test_unwritable_output_dir_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = load_config([*QUICK, f"paths.output_dir={blocker / 'run'}"])
    with pytest.raises(ConfigError, match=r"paths.output_dir='.*a_file/run': cannot write there"):
        run(cfg)


def test_full_disk_is_one_line(tmp_path):
    """A file-size limit (EFBIG, like ENOSPC) hits the first checkpoint write."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *QUICK, f"paths.log_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=limit,
    )
    assert proc.returncode == 1
    assert one_error_line(proc.stderr).startswith("error: cannot write ")
    assert ".ckpt: File too large" in proc.stderr


def test_huge_values_train_with_drop_invalid_and_fail_in_evaluate(tmp_path, capsys):
    db = tmp_path / "huge.db"
    write_agentfarm_db(db, 600, num_agents=30)
    with closing(sqlite3.connect(db)) as con:
        con.execute("UPDATE agent_states SET position_x = 1e308 WHERE rowid % 50 = 0")
        con.commit()
    data = ["data=sqlite", f"data.path={db}"]
    overrides = [*TINY_MODEL, *data, "data.drop_invalid=true", "trainer.max_epochs=1", "test=false"]
    summary = run(load_config([*overrides, "logger=none", f"paths.output_dir={tmp_path / 'r'}"]))
    assert summary["epochs_run"] == 1
    assert evaluate_main([f"ckpt_path={summary['best_model_path']}", *data]) == 2
    assert "rows per column: position_x: 12" in capsys.readouterr().err


# ---------------------------------------------------------------- 10: killed runs
def test_resume_cleans_temp_files_and_orphan_rows(tmp_path):
    out = tmp_path / "a"
    base = [*QUICK, "callbacks.periodic_checkpoint.every_n_epochs=1", f"paths.output_dir={out}"]
    run(load_config([*base, "trainer.max_epochs=3"]))
    # what a kill -9 leaves: temp files of interrupted writes
    stale = [out / "checkpoints" / ".last.ckpt.k1ll3d.tmp", out / ".metrics.csv.k1ll3d.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    # resume (into the same folder) from epoch 2: epoch 3's rows are orphans of a lost epoch
    run(load_config([*base, "trainer.max_epochs=2", f"ckpt_path={out}/checkpoints/epoch_002.ckpt"]))
    assert not any(p.exists() for p in stale)
    for name in ("metrics.csv", "semantic_drift.csv"):
        with open(out / name, newline="") as fh:
            assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2"], name


# ================================================================ hostile files (issue 18)
# Each crafted file below goes through the route a user would take with it; none may create
# the marker file, change a victim file, or answer with more than one line (exit 2).
import hashlib  # noqa: E402
import json  # noqa: E402
from typing import Any  # noqa: E402

import mtc_craft  # noqa: E402
import numpy as np  # noqa: E402

from meaning_transform.codec.__main__ import main as codec_main  # noqa: E402
from meaning_transform.codec.chunks import encode_chunk, symbols_crc  # noqa: E402
from meaning_transform.codec.container import Chunk  # noqa: E402
from meaning_transform.errors import USER_ERRORS  # noqa: E402
from meaning_transform.io import atomic_write  # noqa: E402
from meaning_transform.module import MeaningModule  # noqa: E402


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Victims:
    """A marker that must not appear and files whose bytes must not change."""

    def __init__(self, folder: Path) -> None:
        self.marker = folder / "pwned"
        self.victim = folder / "victim.txt"
        self.victim.write_text("precious\n")
        self.watched: dict[Path, str] = {}
        self.watch(self.victim)

    def watch(self, *paths: Path) -> None:
        for p in paths:
            self.watched[p] = _digest(p)

    def check(self) -> None:
        assert not self.marker.exists(), "a file from a stranger wrote a file"
        for p, digest in self.watched.items():
            assert _digest(p) == digest, f"{p} changed"


@pytest.fixture
def victims(tmp_path) -> Victims:
    return Victims(tmp_path)


def _exit_2(capsys, code: int, *expected: str) -> str:
    """The command exited 2 with one ``error:`` line containing every ``expected``."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for e in expected:
        assert e in err, err
    return err


def _write_text(v: Victims) -> dict[str, Any]:
    """``pathlib.Path.write_text(Path(marker), "x")``, the Path built by instantiate too: what
    writes any file on a tree that instantiates files' targets (a plain string as ``self``
    fails there before writing)."""
    marker = {"_target_": "pathlib.Path", "_args_": [str(v.marker)]}
    return {"_target_": "pathlib.Path.write_text", "_args_": [marker, "x"]}


#: hyperparameter changes that, instantiated, write, truncate or copy a file (marker, victim)
def _payloads(v: Victims) -> dict[str, Any]:
    return {
        "loss.terms.pwn": lambda hp: hp["loss"]["terms"].__setitem__("pwn", _write_text(v)),
        "loss.terms.recon._target_": lambda hp: hp["loss"]["terms"]["recon"].update(
            {"_target_": "builtins.open", "file": str(v.victim), "mode": "w"}
        ),
        "compression._target_": lambda hp: hp.__setitem__(
            "compression",
            {"_target_": "shutil.copyfile", "src": str(v.victim), "dst": str(v.marker)},
        ),
        "optimizer._args_": lambda hp: hp["optimizer"].update({"_args_": [str(v.marker)]}),
        "model.grid_path": lambda hp: hp["model"].__setitem__(
            "grid_path", {"enabled": False, "x": "${oc.env:HOME}"}
        ),
        "loss.semantic_weight": lambda hp: hp["loss"].__setitem__(
            "semantic_weight", "${oc.env:HOME}"
        ),
    }


def test_checkpoint_targets_are_refused_on_every_route(tiny, tmp_path, victims, capsys):
    """_target_, _args_, _partial_ and interpolations a checkpoint brings: evaluate, codec
    compress, load_from_checkpoint; refused naming the field, before anything is built."""
    _, db, good = tiny
    for field, change in _payloads(victims).items():
        evil = mtc_craft.evil_checkpoint(
            good, tmp_path / "evil.ckpt", lambda c, change=change: change(c["hyper_parameters"])
        )
        out = tmp_path / "o.mtc"
        _exit_2(
            capsys,
            evaluate_main([f"ckpt_path={evil}", "output=" + str(tmp_path / "r.json")]),
            field.split("._")[0],
        )
        _exit_2(
            capsys, codec_main(["compress", f"ckpt_path={evil}", f"data.path={db}", f"out={out}"])
        )
        with pytest.raises(CheckpointError, match=field.split("._")[0].split(".")[0]):
            MeaningModule.load_from_checkpoint(evil)
        assert not out.exists()
        victims.check()


def test_run_config_data_target_is_refused(tiny, tmp_path, victims, capsys):
    _, _, good = tiny
    evil = mtc_craft.evil_checkpoint(
        good,
        tmp_path / "evil.ckpt",
        lambda c: c["run_config"]["data"].__setitem__(  # an argument: built before the module
            "num_states",
            {"_target_": "shutil.copyfile", "src": str(victims.victim), "dst": str(victims.marker)},
        ),
    )
    _exit_2(capsys, evaluate_main([f"ckpt_path={evil}"]), "run_config.data.num_states")
    huge = mtc_craft.evil_checkpoint(
        good, tmp_path / "huge.ckpt", lambda c: c["run_config"]["data"].update(num_states=10**12)
    )
    _exit_2(
        capsys, evaluate_main([f"ckpt_path={huge}"]), "num_states", "the most a file may ask for"
    )
    victims.check()


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_files_naming_classes_are_refused_embedded_or_by_path(tiny, tmp_path, victims, capsys):
    """A checkpoint with a payload in place of the embedded model, and a checkpoint a header
    names (with the hash that matches it): decompress and verify refuse both before building
    anything (an embedded model must be integer coding model bytes, which name no class)."""
    _, db, good = tiny
    mtc = tmp_path / "good.mtc"
    assert codec_main(["compress", f"ckpt_path={good}", f"data.path={db}", f"out={mtc}"]) == 0
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["loss"]["terms"]["pwn"] = _write_text(victims)
    digest = mtc_craft.sha(ckpt)
    emb = mtc_craft.rewrite(mtc, tmp_path / "emb.mtc", model=_torch_bytes(ckpt))
    out = tmp_path / "out.db"  # an embedded model is an integer coding model: it names nothing
    _exit_2(capsys, codec_main(["decompress", f"in={emb}", f"out={out}"]), "not an integer")
    _exit_2(capsys, codec_main(["verify", f"in={emb}", f"data.path={db}"]), "not an integer")
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)

    def named_by(sha256: str):
        return lambda h: h["model"].update(
            source="checkpoint", checkpoint={"sha256": sha256, "path": str(evil)}
        )

    named = mtc_craft.rewrite(mtc, tmp_path / "named.mtc", model=b"", header=named_by(digest))
    _exit_2(capsys, codec_main(["decompress", f"in={named}", f"out={out}"]), "loss.terms.pwn")
    _exit_2(capsys, codec_main(["verify", f"in={named}", f"data.path={db}"]), "loss.terms.pwn")
    other = mtc_craft.rewrite(mtc, tmp_path / "other.mtc", model=b"", header=named_by("0" * 64))
    _exit_2(capsys, codec_main(["decompress", f"in={other}", f"out={out}"]), "another model")
    assert not out.exists()
    victims.check()


def test_resumed_checkpoint_cannot_copy_a_file_into_the_run(tmp_path, victims):
    """A checkpoint's callback state names the 'best checkpoint' to carry over on resume: only
    the best.ckpt beside the resumed checkpoint is followed, never another file."""
    out = tmp_path / "a"
    run(load_config([*QUICK, f"paths.output_dir={out}"]))
    last = out / "checkpoints" / "last.ckpt"
    secret = tmp_path / "secret.txt"
    secret.write_text("token-1234\n")

    def point_at_secret(ckpt: dict) -> None:
        for key, state in ckpt["callbacks"].items():
            if key.startswith("BestCheckpoint"):
                state.update(best_model_path=str(secret), dirpath=str(tmp_path / "elsewhere"))

    evil = mtc_craft.evil_checkpoint(last, tmp_path / "evil.ckpt", point_at_secret)
    resumed = tmp_path / "b"
    run(
        load_config(
            [*QUICK, "trainer.max_epochs=2", f"ckpt_path={evil}", f"paths.output_dir={resumed}"]
        )
    )
    assert not any(p.is_file() and b"token-1234" in p.read_bytes() for p in resumed.rglob("*")), (
        "the resumed run copied a file its checkpoint named"
    )


def test_sql_in_a_header_is_never_run(tiny, tmp_path, victims, capsys):
    """SQL in the header's schema objects runs only as the single CREATE statement of the
    object it claims to be (``SchemaGuard``): for agent_states' own entry, and for an added
    object of each kind."""
    _, db, good = tiny
    mtc = tmp_path / "good.mtc"
    assert codec_main(["compress", f"ckpt_path={good}", f"data.path={db}", f"out={mtc}"]) == 0
    out = tmp_path / "out.db"
    hostile = (
        f"VACUUM INTO '{victims.marker}'",
        f"ATTACH '{victims.marker}' AS x",
        "CREATE TABLE agent_states AS SELECT 1 AS agent_id",
        "CREATE TABLE agent_states (agent_id, step_number); CREATE TABLE pwn (x)",
        "PRAGMA journal_mode = WAL",
    )

    def states_sql(sql: str):
        def change(h: dict) -> None:
            for o in h["objects"]:
                if o["name"] == "agent_states":
                    o["sql"] = sql

        return change

    for sql in hostile:
        bad = mtc_craft.rewrite(mtc, tmp_path / "sql.mtc", header=states_sql(sql))
        _exit_2(capsys, codec_main(["decompress", f"in={bad}", f"out={out}"]), "refused")
    for kind in ("index", "view", "trigger"):
        extra = {"kind": kind, "name": "x", "table": "agents", "sql": hostile[0]}
        bad = mtc_craft.rewrite(
            mtc, tmp_path / "extra.mtc", header=lambda h, e=extra: h["objects"].append(e)
        )
        _exit_2(capsys, codec_main(["decompress", f"in={bad}", f"out={out}"]), "refused")
    assert not out.exists()
    victims.check()


#: run in a subprocess: every crafted file through decompress, then the peak memory
_MEMORY_SCRIPT = """
import json, re, sys, time
from meaning_transform.codec.__main__ import main
codes, slowest = [], 0.0
for path in sys.argv[2:]:
    start = time.perf_counter()
    codes.append(main(["decompress", "in=" + path, "out=" + sys.argv[1]]))
    slowest = max(slowest, time.perf_counter() - start)
# the process's own peak (VmHWM): ru_maxrss would include the forking parent's resident size
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) // 1024
print(json.dumps({"codes": codes, "peak_mib": peak, "slowest_s": slowest}))
"""


def _claim_rows(rows: int) -> Any:
    """A header change: the file holds ``rows`` states (the trailer checks the chunks' sum)."""
    return lambda h: h["states"].update(rows=rows)


def test_crafted_sizes_never_allocate_what_they_claim(tiny, tmp_path):
    """Files of at most 1 MB that claim huge sizes: a zlib bomb in the header and in a chunk's
    keys, a chunk claiming 3e8 rows, a named checkpoint of 24576-wide layers (its hash right),
    model lengths of 2**40 and u64 max. Each is one line and exit 2, and the process stays
    under 1 GiB."""
    _, db, good = tiny
    mtc = tmp_path / "good.mtc"
    assert codec_main(["compress", f"ckpt_path={good}", f"data.path={db}", f"out={mtc}"]) == 0
    bomb = mtc_craft.zlib_bomb(960)  # 0.94 MiB that inflate to 960 MiB
    files = [mtc_craft.raw(tmp_path / "header_bomb.mtc", bomb, b"")]
    # a chunk's keys as the largest stream a ~1 MB block may hold (250 MiB of zeros): framing
    # bounds each stream by the block's size, so this is the worst a keys bomb can be
    keys_bomb = backend.pack([bytes(250 << 20)], methods=(backend.ZSTD,))

    def columns_bomb(c: Chunk) -> None:
        c.columns = keys_bomb

    files.append(mtc_craft.rewrite(mtc, tmp_path / "columns_bomb.mtc", chunk=columns_bomb))

    def many_rows(c: Chunk) -> None:
        c.meta["n"] = 300_000_000

    files.append(  # the header's count of states says so too (else the trailer refuses it)
        mtc_craft.rewrite(
            mtc, tmp_path / "rows.mtc", chunk=many_rows, header=_claim_rows(300_000_000)
        )
    )
    wide = torch.load(good, map_location="cpu", weights_only=True)
    wide["hyper_parameters"]["model"]["hidden_dims"] = [24576, 24576]
    torch.save(wide, tmp_path / "wide.ckpt")
    named = {"sha256": mtc_craft.sha(wide), "path": str(tmp_path / "wide.ckpt")}
    files.append(
        mtc_craft.rewrite(
            mtc,
            tmp_path / "wide.mtc",
            model=b"",
            header=lambda h: h["model"].update(source="checkpoint", checkpoint=named),
        )
    )
    good_bytes = mtc.read_bytes()
    start = len(mtc_craft.MAGIC) + 10
    (n,) = __import__("struct").unpack_from("<I", good_bytes, len(mtc_craft.MAGIC) + 2)
    prefix = good_bytes[: start + n]
    for name, length in (("len40", 2**40), ("lenmax", 2**64 - 1)):
        p = tmp_path / f"{name}.mtc"
        p.write_bytes(prefix + __import__("struct").pack("<QI", length, 0) + b"\0" * 64)
        files.append(p)
    assert all(p.stat().st_size <= 1 << 20 for p in files)
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path / "out.db"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert result["codes"] == [2] * len(files) and len(errors) == len(files), proc.stderr
    assert "Traceback" not in proc.stderr
    reasons = ["header inflates", "keys format", "field 'n' is out of range", "hidden_dims"]
    reasons += ["truncated or corrupted"] * 2  # each refused by the check it was made for
    assert all(r in e for r, e in zip(reasons, errors, strict=True)), errors
    assert result["peak_mib"] < 1024, result
    assert result["slowest_s"] < 60, result
    assert not (tmp_path / "out.db").exists()


def test_outputs_never_destroy_inputs(tiny, tmp_path, victims, capsys):
    _, db, good = tiny
    src = tmp_path / "src.db"
    shutil.copy(db, src)
    mtc = tmp_path / "a.mtc"
    assert codec_main(["compress", f"ckpt_path={good}", f"data.path={src}", f"out={mtc}"]) == 0
    link = tmp_path / "link.db"
    link.symlink_to(src)
    victims.watch(src, mtc)
    base = [f"ckpt_path={good}", f"data.path={src}"]
    _exit_2(
        capsys, codec_main(["compress", *base, f"out={src}", "overwrite=true"]), "destroy the input"
    )
    _exit_2(
        capsys,
        codec_main(["compress", *base, f"out={link}", "overwrite=true"]),
        "destroy the input",
    )
    _exit_2(
        capsys,
        codec_main(["decompress", f"in={mtc}", f"out={mtc}", "overwrite=true"]),
        "destroy the input",
    )
    _exit_2(capsys, evaluate_main([f"ckpt_path={good}", f"output={src}"]), "exists")
    _exit_2(
        capsys,
        codec_main(["compress", *base, f"out={tmp_path / 'b.mtc'}", "overwrite=no"]),
        "overwrite='no' is invalid",
    )
    _exit_2(
        capsys,
        codec_main(["compress", *base, f"out={tmp_path / 'b.mtc'}", "embed_model=maybe"]),
        "embed_model='maybe'",
    )
    victims.check()


def test_second_of_two_writers_fails_with_one_line(tmp_path):
    """Creating an output is exclusive: when the name appears while a command writes (another
    run got there first), it is not replaced."""
    target = tmp_path / "out.mtc"

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(b"mine")
        target.write_bytes(b"theirs")  # the other writer finishes first

    with pytest.raises(ConfigError, match="created by someone else"):
        atomic_write(target, write, exclusive=True)
    assert target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mtc"]  # no temp file left


def _dup_agents_db(db: Path, dst: Path) -> Path:
    shutil.copy(db, dst)
    with closing(sqlite3.connect(dst)) as con:
        sql = con.execute("SELECT sql FROM sqlite_master WHERE name = 'agents'").fetchone()[0]
        con.execute("ALTER TABLE agents RENAME TO old_agents")
        con.execute(sql.replace("PRIMARY KEY (agent_id)", "x INTEGER").replace(", x INTEGER", ""))
        con.execute("INSERT INTO agents SELECT * FROM old_agents")
        con.execute("INSERT INTO agents SELECT * FROM old_agents LIMIT 1")
        con.execute("DROP TABLE old_agents")
        con.commit()
    return dst


def test_duplicate_agents_are_carried_exactly_and_verify_reads_the_source_itself(
    tiny, tmp_path, capsys
):
    """An agents table that lists an agent twice comes back exactly as it was, and its states
    once each (they are not read through a join); verify compares with the source's own rows,
    so a database with one more agents row fails it."""
    _, db, good = tiny
    dup = _dup_agents_db(db, tmp_path / "dup.db")
    out, restored = tmp_path / "d.mtc", tmp_path / "d.db"
    assert codec_main(["compress", f"ckpt_path={good}", f"data.path={dup}", f"out={out}"]) == 0
    assert codec_main(["decompress", f"in={out}", f"out={restored}"]) == 0
    count = "SELECT (SELECT COUNT(*) FROM agents), (SELECT COUNT(*) FROM agent_states)"
    with closing(sqlite3.connect(dup)) as a, closing(sqlite3.connect(restored)) as b:
        assert a.execute(count).fetchone() == b.execute(count).fetchone() == (26, 1500)
    assert codec_main(["verify", f"in={out}", f"data.path={dup}"]) == 0
    with closing(sqlite3.connect(dup)) as con:
        con.execute("INSERT INTO agents SELECT * FROM agents LIMIT 1")
        con.commit()
    assert codec_main(["verify", f"in={out}", f"data.path={dup}"]) == 1
    assert "verify failed: table 'agents'" in capsys.readouterr().err


def test_decoded_values_outside_declared_ranges_are_refused(tiny, tmp_path, capsys):
    """A chunk re-coded (CRCs right) so that positions decode 100,000 cells away from any the
    writer saw: the chunk's declared ranges do not hold them, so nothing is written. Also a
    chunk whose declared ranges were narrowed."""
    from meaning_transform.codec.chunks import decode_chunk
    from meaning_transform.codec.state_keys import decode_state_keys
    from meaning_transform.codec.states import read_known, same_agent
    from meaning_transform.models.integer_export import export, export_encoder

    _, db, good = tiny
    mtc = tmp_path / "good.mtc"
    args = ["compress", f"ckpt_path={good}", f"data.path={db}", f"out={mtc}", "chunk_size=500"]
    assert codec_main(args) == 0
    module = MeaningModule.load_from_checkpoint(good)
    integer = export(module.codec, module.bottleneck)
    header, model, sections = mtc_craft.parts(mtc)
    with closing(sqlite3.connect(db)) as con:
        known = read_known(con)
    i = next(i for i, c in enumerate(sections) if isinstance(c, Chunk))
    c = sections[i]
    keys, _ = decode_state_keys(c.columns, c.meta["n"], known)
    flag = same_agent(keys["agent_id"])
    symbols = decode_chunk(integer, c.z_words, c.x_words, flag)
    symbols[:, [f.name for f in module.schema.features].index("position_x")] += 100_000
    offsets = export_encoder(module.codec, module.bottleneck).offsets(symbols, flag)
    coded = encode_chunk(integer, symbols, flag, offsets)
    meta = dict(c.meta, symbols_crc=symbols_crc(symbols))  # the ranges stay what was declared
    sections[i] = Chunk(meta, coded.z_words, coded.x_words, c.columns)
    bad = mtc_craft.assemble(tmp_path / "far.mtc", header, model, sections)
    out = tmp_path / "out.db"
    _exit_2(
        capsys,
        codec_main(["decompress", f"in={bad}", f"out={out}"]),
        "outside the ranges it declares",
    )

    def narrow(ch: Chunk) -> None:
        ch.meta["ranges"] = [[r[0], r[0]] for r in ch.meta["ranges"]]

    bad = mtc_craft.rewrite(mtc, tmp_path / "narrow.mtc", chunk=narrow)
    _exit_2(
        capsys,
        codec_main(["decompress", f"in={bad}", f"out={out}"]),
        "outside the ranges it declares",
    )
    assert not out.exists()


def test_errors_never_echo_file_contents_and_name_special_files(tmp_path, capsys):
    secret = tmp_path / "token.db"
    secret.write_bytes(b"SECRET-TOKEN-42 and more private bytes")
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    out = str(tmp_path / "o.mtc")
    ckpt = "ckpt_path=" + str(secret)
    for path, expected in ((secret, "not an SQLite database"), (tmp_path, "is a directory"),
                           (fifo, "is a FIFO"), (Path("/dev/null"), "is a device")):  # fmt: skip
        err = _exit_2(capsys, codec_main(["verify", f"in={secret}", f"data.path={path}"]))
        err += _exit_2(
            capsys, evaluate_main([f"ckpt_path={path}", "data=sqlite", f"data.path={path}"])
        )
        assert "SECRET" not in err
        if path != secret:
            assert expected in err, err
    err = _exit_2(capsys, codec_main(["compress", ckpt, f"data.path={secret}", f"out={out}"]))
    assert "SECRET" not in err and "not an SQLite database" in err


def test_fuzzed_files_are_one_line_or_exact(tiny, tmp_path):
    """1,000 single-byte mutations and 200 truncations of a valid file: each is refused with
    one line (a user error) or decodes exactly the original states."""
    from meaning_transform.codec.commands import Progress, restore
    from meaning_transform.codec.container import Reader
    from meaning_transform.codec.model import open_file_model

    _, db, good = tiny
    small = tmp_path / "small.db"
    write_agentfarm_db(small, 120, num_agents=6)
    mtc = tmp_path / "f.mtc"
    args = ["compress", f"ckpt_path={good}", f"data.path={small}", f"out={mtc}", "chunk_size=40"]
    assert codec_main(args) == 0
    data = mtc.read_bytes()
    header = mtc_craft.parts(mtc)[0]
    file_model = open_file_model(Reader(io.BytesIO(data), "f.mtc"), None)
    probe = tmp_path / "probe.db"

    def decode(blob: bytes) -> list:
        reader = Reader(io.BytesIO(blob), "probe.mtc")
        # the model is read once: a changed (valid) header goes the whole way instead
        model = file_model if reader.header == header else open_file_model(reader, None)
        probe.unlink(missing_ok=True)
        restore(reader, model, str(probe), Progress("fuzz", 0))
        with closing(sqlite3.connect(probe)) as con:
            return con.execute("SELECT * FROM agent_states ORDER BY rowid").fetchall()

    original = decode(data)
    rng = np.random.default_rng(18)
    blobs = []
    for _ in range(1000):
        b = bytearray(data)
        i = int(rng.integers(len(b)))
        b[i] = (b[i] + int(rng.integers(1, 256))) % 256
        blobs.append(bytes(b))
    blobs += [data[: int(n)] for n in rng.integers(0, len(data), 200)]
    outcomes = {"refused": 0, "exact": 0}
    for blob in blobs:
        try:
            got = decode(blob)
        except USER_ERRORS as e:
            assert "\n" not in str(e).strip()
            outcomes["refused"] += 1
        else:
            assert got == original
            outcomes["exact"] += 1
    assert sum(outcomes.values()) == 1200 and outcomes["refused"] > 1000


# ---------------------------------------------------------------- one line, not a traceback
def test_malformed_headers_and_chunks_are_one_line(tiny, tmp_path, capsys):
    _, db, good = tiny
    mtc = tmp_path / "good.mtc"
    assert codec_main(["compress", f"ckpt_path={good}", f"data.path={db}", f"out={mtc}"]) == 0
    out = tmp_path / "out.db"
    cases = {
        "list": lambda: mtc_craft.raw(tmp_path / "l.mtc", zlib.compress(b"[1, 2]"), b""),
        "no states": lambda: mtc_craft.rewrite(
            mtc, tmp_path / "nl.mtc", header=lambda h: h.pop("states")
        ),
        "objects": lambda: mtc_craft.rewrite(
            mtc, tmp_path / "ob.mtc", header=lambda h: h["objects"].append([1, 2])
        ),
        "settings": lambda: mtc_craft.rewrite(
            mtc, tmp_path / "se.mtc", header=lambda h: h["settings"].update(encoding="EBCDIC")
        ),
        "chunk_size": lambda: mtc_craft.rewrite(
            mtc, tmp_path / "cs.mtc", header=lambda h: h.update(chunk_size="many")
        ),
        "n": lambda: mtc_craft.rewrite(  # the header's count too: the trailer counts "abc" as 0
            mtc, tmp_path / "n.mtc", chunk=lambda c: c.meta.update(n="abc"), header=_claim_rows(0)
        ),
        "meta list": lambda: mtc_craft.rewrite(
            mtc, tmp_path / "ml.mtc", chunk=lambda c: c.meta.update(ranges="x")
        ),
        "columns": lambda: mtc_craft.rewrite(
            mtc, tmp_path / "c.mtc", chunk=lambda c: setattr(c, "columns", b"not zlib")
        ),
        "columns json": lambda: mtc_craft.rewrite(
            mtc,
            tmp_path / "cj.mtc",
            chunk=lambda c: setattr(c, "columns", zlib.compress(b"\x05\0\0\0[1,2]")),
        ),
    }
    reasons = {  # each refused by the check made for it, not by an earlier one
        "list": "not a JSON object",
        "no states": "field 'states' is missing",
        "objects": "a schema object is not",
        "settings": "text encoding 'EBCDIC'",
        "chunk_size": "field 'chunk_size' has the wrong type",
        "n": "field 'n' has the wrong type",
        "meta list": "field 'ranges' has the wrong type",
        "columns": "compression method 7 does not exist",
        "columns json": "a grouped stream is too long",
    }
    for name, make in cases.items():
        path = make()
        _exit_2(capsys, codec_main(["decompress", f"in={path}", f"out={out}"]), reasons[name])
    assert not out.exists()


def _db_variant(db: Path, dst: Path, *sql: str) -> Path:
    shutil.copy(db, dst)
    with closing(sqlite3.connect(dst)) as con:
        for statement in sql:
            con.execute(statement)
        con.commit()
    return dst


def test_odd_databases_are_one_line(tiny, tmp_path, capsys):
    _, db, good = tiny
    out = tmp_path / "o.mtc"
    view = _db_variant(db, tmp_path / "view.db", "ALTER TABLE agent_states RENAME TO s",
                       "CREATE VIEW agent_states AS SELECT * FROM s")  # fmt: skip
    quote = _db_variant(db, tmp_path / "quote.db",
                        'ALTER TABLE agent_states ADD COLUMN "x"")); DROP TABLE agents; --" TEXT')  # fmt: skip
    lots = _db_variant(
        db, tmp_path / "lots.db", "UPDATE agent_states SET resource_level = 'lots' WHERE rowid = 9"
    )
    yes = _db_variant(
        db, tmp_path / "yes.db", "UPDATE agent_states SET is_defending = 'yes' WHERE rowid = 9"
    )
    far = _db_variant(
        db, tmp_path / "far.db", "UPDATE agent_states SET total_reward = 1e15 WHERE rowid = 9"
    )
    empty = _db_variant(db, tmp_path / "empty.db", "DELETE FROM agent_states")
    base = [f"ckpt_path={good}", f"out={out}"]
    _exit_2(capsys, codec_main(["compress", *base, f"data.path={view}"]), "is a view")
    _exit_2(capsys, codec_main(["compress", f"out={out}", f"data.path={empty}"]),
            f"data.path={empty}: table 'agent_states' has no rows")  # fmt: skip
    _exit_2(capsys, codec_main(["compress", *base, f"data.path={lots}"]), "resource_level")
    # the default coder reads a snapshot of the database; its errors still name the user's file
    _exit_2(capsys, codec_main(["compress", f"out={out}", f"data.path={lots}"]),
            f"{lots}: agent_states.resource_level")  # fmt: skip
    _exit_2(capsys, codec_main(["compress", *base, f"data.path={yes}"]), "is_defending")
    _exit_2(capsys, codec_main(["compress", *base, f"data.path={far}"]), "outside the range")
    # a column named with a quote and SQL in it is just a name: carried, restored, verified
    assert codec_main(["compress", *base, f"data.path={quote}"]) == 0
    restored = tmp_path / "q.db"
    assert codec_main(["decompress", f"in={out}", f"out={restored}"]) == 0
    with closing(sqlite3.connect(restored)) as con:
        names = [r[1] for r in con.execute("PRAGMA table_info(agent_states)")]
    assert names[-1] == 'x")); DROP TABLE agents; --'
    assert codec_main(["verify", f"in={out}", f"data.path={quote}"]) == 0
    capsys.readouterr()


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder on a read-only file system (a tmpfs mounted ro; skipped where mount is denied)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip("cannot mount a read-only file system here")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_unwritable_outputs_are_one_line(tiny, tmp_path, readonly_dir, capsys):
    _, db, good = tiny
    mtc = tmp_path / "a.mtc"
    assert codec_main(["compress", f"ckpt_path={good}", f"data.path={db}", f"out={mtc}"]) == 0
    _exit_2(
        capsys,
        codec_main(
            ["compress", f"ckpt_path={good}", f"data.path={db}", f"out={readonly_dir / 'x.mtc'}"]
        ),
        "not writable",
    )
    _exit_2(
        capsys,
        codec_main(["decompress", f"in={mtc}", f"out={readonly_dir / 'x.db'}"]),
        "not writable",
    )
    _exit_2(
        capsys,
        evaluate_main([f"ckpt_path={good}", f"output={readonly_dir / 'x.json'}"]),
        "not writable",
    )
    with pytest.raises(ConfigError, match="read-only file system"):
        check_args([f"paths.log_dir={readonly_dir / 'outputs'}"])


_LIMITED = """
import json, resource, signal, sys
from meaning_transform.codec.__main__ import main as codec
from meaning_transform.evaluate import main as evaluate
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # as a shell with ulimit -f would leave it
codes = []
for case in json.loads(sys.argv[1]):
    resource.setrlimit(resource.RLIMIT_FSIZE, (case["limit"], resource.RLIM_INFINITY))
    main = evaluate if case["args"][0] == "evaluate" else codec
    codes.append(main(case["args"][1:] if main is evaluate else case["args"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print(json.dumps(codes))
"""


def test_file_size_limit_is_one_line_and_leaves_nothing(tiny, tmp_path):
    """``ulimit -f`` reached while writing (like a full disk): compress, decompress and
    evaluate each give one line and exit 2, and leave no temp file."""
    _, db, good = tiny
    mtc = tmp_path / "a.mtc"
    assert codec_main(["compress", f"ckpt_path={good}", f"data.path={db}", f"out={mtc}"]) == 0
    work = tmp_path / "w"
    work.mkdir()
    cases = [
        {"limit": 20_000, "args": ["compress", f"ckpt_path={good}", f"data.path={db}",
                                   f"out={work / 'b.mtc'}", "embed_model=true"]},
        {"limit": 20_000, "args": ["decompress", f"in={mtc}", f"out={work / 'b.db'}"]},
        {"limit": 2_000, "args": ["evaluate", f"ckpt_path={good}", f"output={work / 'r.json'}",
                                  "split=all"]},
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _LIMITED, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [2, 2, 2], proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3 and "Traceback" not in proc.stderr, proc.stderr
    # compress copies a database nobody guarantees to be still to a snapshot first: the limit
    # stops that copy; decompress and evaluate hit it writing their outputs
    assert "cannot take a consistent snapshot to read" in errors[0], errors
    assert "disk I/O error (a full disk or a file size limit?)" in errors[1], errors
    assert "refused to run its SQL" not in errors[1], errors  # the file's SQL is not to blame
    assert errors[2].startswith("error: cannot read or write"), errors
    assert list(work.iterdir()) == []


def test_hydra_level_values_are_checked_before_torch(tmp_path):
    (tmp_path / "file").write_text("")
    for args, expected in (
        ([f"experiment_name={'a' * 300}"], "at most 100"),
        ([f"paths.root_dir={tmp_path / 'file'}"], "is a file"),
        (["seed=1180591620717411303424"], "2**32"),
        (["monitor.metric=val/nonexistent"], "monitor.metric='val/nonexistent' is invalid"),
        (["compression=lossless", "model.max_bins=0"], "model.max_bins=0"),
        (["compression=lossless", "model.span_std=-4"], "model.span_std=-4"),
        (["compression=lossless", "model.delta_window=-1"], "model.delta_window=-1"),
        ([f"callbacks.model_checkpoint.dirpath={tmp_path / 'file'}"], "is a file"),
        (["objective_beta=nan"], "NaN and infinite"),
        (["model.activation=Transformer"], "model.activation='Transformer'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            check_args(args)
    GlobalHydra.instance().clear()


def test_signals_during_compress_leave_nothing(tiny, tmp_path):
    """SIGINT and SIGTERM while compress writes: one line, exit 130 / 143, no temp file."""
    _, db, good = tiny
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        work = tmp_path / f"s{code}"
        work.mkdir()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meaning_transform.codec",
                "compress",
                f"ckpt_path={good}",
                f"data.path={db}",
                f"out={work / 'x.mtc'}",
                "chunk_size=1",
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not any(work.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "compress finished before it could be interrupted"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err[-2000:]
        assert one_error_line(err).startswith("error: ")
        assert list(work.iterdir()) == []


def test_checkpoints_small_in_the_file_but_huge_when_walked_are_refused(tiny, tmp_path, capsys):
    """A zero-stride tensor view (a few bytes stored, a billion elements once materialized, as
    hashing would) and hyperparameters that share one list at every level (a small pickle,
    64**8 items to walk): refused at reading, one line, before anything walks them."""
    _, db, good = tiny
    wide = torch.zeros(1).expand(10**9)
    shared: Any = [0]
    for _ in range(8):
        shared = [shared] * 64
    for name, change in (
        ("view", lambda c: c["state_dict"].__setitem__("extra", wide)),
        ("shared", lambda c: c["hyper_parameters"]["model"].__setitem__("x", shared)),
    ):
        evil = mtc_craft.evil_checkpoint(good, tmp_path / f"{name}.ckpt", change)
        assert evil.stat().st_size < 1 << 20
        out = tmp_path / "o.mtc"
        args = ["compress", f"ckpt_path={evil}", f"data.path={db}", f"out={out}"]
        _exit_2(capsys, codec_main(args), "cannot be read")
        _exit_2(capsys, evaluate_main([f"ckpt_path={evil}"]), "cannot be read")
