"""Files from strangers (issue 18): hostile checkpoints, .mtc files, databases, overrides and
faults through the real command lines of two code versions, side by side.

    python benchmarks/hostile_files.py --before /work/wt-before/src      # before and after
    python benchmarks/hostile_files.py                                   # this tree only

For each version: a tiny lossless model is trained (``train.py``, one epoch) on a tiny
synthetic simulation.db (tests/agentfarm_db.py) and the database compressed; then every case
gets a fresh folder with a copy of the database, of the good .mtc, a ``victim.txt`` and the
files crafted for it (benchmarks/_hostile_craft.py, in the format of the version that reads
them), and runs its command (``python -m meaning_transform.codec|evaluate``, ``train.py``) as a
new process with that version's ``src`` on the path. Each cell says what happened
(benchmarks/_hostile_run.py: WROTE FILE, DATA LOSS, WRONG RESULT, MEMORY, TRACEBACK, ... or
``one line, exit N`` / ``ok``). Prints a markdown table and the counts per outcome, and writes
benchmarks/results/hostile_files.json.

Some 110 fresh processes that each import torch: about 11 minutes on the shared 2-core machine
at load 5 (``--only NAME ...`` runs the cases whose name contains one of the words). Memory-heavy
cases run alone, the rest ``--jobs`` at a time. Checkpoints, databases and blobs are crafted in
this tree's environment (the same for both versions); ``--after`` is meant to be this tree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hostile_run import (  # noqa: E402
    TIMEOUT_S,
    Case,
    changes,
    count_states,
    outcome,
    reap,
    run_one,
    snapshot,
    spawn,
    temp_files,
)
from _results import ROOT, new_results, write_results  # noqa: E402

CRAFT = Path(__file__).resolve().parent / "_hostile_craft.py"
#: the tiny lossless model each version trains (as tests/codec_helpers.train_lossless, 1 epoch)
MODEL = ["compression=lossless", "model.hidden_dims=[16]", "model.latent_dim=2",
         "model.context=previous", "torch_threads=1", "callbacks.progress_bar.refresh_rate=0",
         "logger=none", "test=false", "trainer.max_epochs=1"]  # fmt: skip
#: a one-epoch train.py run on 300 synthetic states, for the Hydra-level cases
QUICK = ["model.hidden_dims=[16]", "model.latent_dim=2", "data.num_states=300",
         "data.num_agents=15", "trainer.max_epochs=1", "torch_threads=1", "logger=none",
         "test=false", "callbacks.progress_bar.refresh_rate=0", "paths.log_dir={case}/outputs"]  # fmt: skip


def codec(*args: str) -> tuple[str, ...]:
    return ("-m", "meaning_transform.codec", *args)


def evaluate(*args: str) -> tuple[str, ...]:
    return ("-m", "meaning_transform.evaluate", *args)


def train(*args: str) -> tuple[str, ...]:
    return ("{train}", *QUICK, *args)


def decompress(*craft: str, src: str = "x.mtc", out: str = "o.db", extra: tuple = ()) -> dict:
    """Case fields of ``codec decompress`` of ``{case}/src`` after the ``craft`` tasks."""
    argv = codec("decompress", f"in={{case}}/{src}", f"out={{case}}/{out}", *extra)
    return {"route": "codec decompress", "craft": craft, "argv": argv}


def verify(*craft: str, src: str = "x.mtc", data: str = "{case}/sim.db") -> dict:
    """Case fields of ``codec verify`` of ``{case}/src`` against ``data``."""
    argv = codec("verify", f"in={{case}}/{src}", f"data.path={data}")
    return {"route": "codec verify", "craft": craft, "argv": argv}


def compress(*args: str, craft: tuple = (), data: str = "sim.db", ckpt: str = "{ckpt}") -> dict:
    """Case fields of ``codec compress`` of ``{case}/data`` with ``ckpt``."""
    argv = codec("compress", f"ckpt_path={ckpt}", f"data.path={{case}}/{data}", *args)
    return {"route": "codec compress", "craft": craft, "argv": argv}


def evaluate_route(*args: str, craft: tuple = ()) -> dict:
    """Case fields of ``evaluate``."""
    return {"route": "evaluate", "craft": craft, "argv": evaluate(*args)}


def train_route(*args: str) -> dict:
    """Case fields of ``train.py`` (a one-epoch run on synthetic data)."""
    return {"route": "train.py", "argv": train(*args)}


EVIL = "{case}/evil.ckpt"
OUT = "out={case}/o.mtc"
HEAVY = {"heavy": True}  # run alone: the before tree may take GBs
CASES = [
    # valid files: each version's own tools work
    Case("valid database", expect="ok", **compress(OUT)),
    Case("valid .mtc", expect="ok", **decompress(src="a.mtc")),
    Case("valid .mtc", expect="ok", **verify(src="a.mtc")),
    Case("valid checkpoint", expect="ok", **evaluate_route("ckpt_path={ckpt}", "output={case}/r.json")),
    # 1: no code from files
    Case("`_target_` in checkpoint hyper_parameters", **evaluate_route(f"ckpt_path={EVIL}", "output={case}/r.json", craft=("evil_ckpt",))),
    Case("`_target_` in checkpoint hyper_parameters", **compress(OUT, ckpt=EVIL, craft=("evil_ckpt",))),
    Case("`_target_` in checkpoint run_config.data", **evaluate_route(f"ckpt_path={EVIL}", "output={case}/r.json", craft=("evil_run_data_ckpt",))),
    Case("embedded model naming a callable", **decompress("evil_ckpt", "mtc_embedded_evil")),
    Case("embedded model naming a callable", **verify("evil_ckpt", "mtc_embedded_evil")),
    Case("non-embedded .mtc naming such a checkpoint", **decompress("evil_ckpt", "mtc_named_evil")),
    Case("non-embedded .mtc naming such a checkpoint", **verify("evil_ckpt", "mtc_named_evil")),
    # 2: no SQL from files
    Case("`VACUUM INTO` as agent_states' SQL in the header", **decompress("mtc_sql")),
    # 3: bounded memory
    Case("zlib bomb (960 MiB) as the header", extra=HEAVY, **decompress("bomb", "mtc_header_bomb")),
    Case("compression bomb in a block's columns", extra=HEAVY, **decompress("bomb", "mtc_columns_bomb")),
    Case("a chunk claiming 3e8 states", extra=HEAVY, **decompress("mtc_many_rows")),
    Case("model with hidden_dims=[24576, 24576]", extra=HEAVY, **decompress("wide_ckpt", "mtc_wide")),
    Case("embedded model length 2**40", extra=HEAVY, **decompress("mtc_len40")),
    Case("embedded model length 2**64-1", extra=HEAVY, **decompress("mtc_lenmax")),
    # 4: never destroy an input, never pass a wrong result
    Case("out= the source database, overwrite=true", **compress("out={case}/sim.db", "overwrite=true")),
    Case("out= a link to the source database, overwrite=true", **compress("out={case}/link.db", "overwrite=true")),
    Case("out= the .mtc itself, overwrite=true", **decompress(src="a.mtc", out="a.mtc", extra=("overwrite=true",))),
    Case("output= an existing file, no overwrite", **evaluate_route("ckpt_path={ckpt}", "output={case}/sim.db")),
    Case("overwrite=no onto an existing out=", **compress("out={case}/a.mtc", "overwrite=no")),
    Case("embed_model=maybe", **compress(OUT, "embed_model=maybe")),
    Case("two compress at once to one out=", kind="concurrent", **compress(OUT)),
    Case("agents lists an agent twice: compress, verify, restore", kind="duplicates", expect="either", **verify("dup_agents_db", src="d.mtc", data="{case}/dup.db")),
    Case("symbols decoding far outside the data's range", **decompress("mtc_far_symbols")),
    Case("objective_beta=nan", **train_route("objective_beta=nan")),
    Case("non-SQLite file holding a secret", **compress(OUT, data="token.db", craft=("secret_db",))),
    Case("a folder as the database", say="director", **verify(src="a.mtc", data="{case}")),
    Case("a FIFO as the database", say="FIFO", **verify(src="a.mtc", data="{case}/fifo.db")),
    # 5: one line, not a traceback
    Case("header is a JSON list", **decompress("mtc_header_list")),
    Case("header lacks agent_states' description", **decompress("mtc_missing_key")),
    Case("header chunk_size='many'", **verify("mtc_chunk_size")),
    Case("chunk n='abc'", **decompress("mtc_n_text")),
    Case("chunk columns not zlib", **decompress("mtc_columns_not_zlib")),
    Case("agent_states is a VIEW", **compress(OUT, data="odd.db", craft=("view_db",))),
    Case("text 'lots' in a numeric column", **compress(OUT, data="odd.db", craft=("lots_db",))),
    Case("a value far outside the training range", **compress(OUT, data="odd.db", craft=("far_db",))),
    Case("a column named with a quote and SQL", expect="either", **compress(OUT, data="odd.db", craft=("quote_db",))),
    Case("read-only output folder", kind="readonly", **compress("out={case}/ro/x.mtc")),
    Case("read-only output folder", kind="readonly", **decompress(src="a.mtc", out="ro/x.db")),
    Case("read-only output folder", kind="readonly", **evaluate_route("ckpt_path={ckpt}", "output={case}/ro/r.json")),
    Case("ulimit -f 20 KB", kind="fsize", extra={"fsize": 20_000}, **compress("out={case}/w/x.mtc", "embed_model=true")),
    Case("ulimit -f 20 KB", kind="fsize", extra={"fsize": 20_000}, **decompress(src="a.mtc", out="w/x.db")),
    Case("ulimit -f 2 KB", kind="fsize", extra={"fsize": 2_000}, **evaluate_route("ckpt_path={ckpt}", "output={case}/w/r.json", "split=all")),
    Case("experiment_name of 300 characters", **train_route("experiment_name=" + "a" * 300)),
    Case("seed=2**70", **train_route("seed=1180591620717411303424")),
    Case("monitor.metric=val/nonexistent", **train_route("monitor.metric=val/nonexistent")),
    Case("lossless model.max_bins=0", **train_route("compression=lossless", "model.max_bins=0")),
    Case("SIGINT during compress", kind="signal", extra={"signal": "SIGINT"}, **compress("out={case}/w/x.mtc", "chunk_size=1")),
    Case("SIGTERM during compress", kind="signal", extra={"signal": "SIGTERM"}, **compress("out={case}/w/x.mtc", "chunk_size=1")),
]  # fmt: skip


# ---------------------------------------------------------------- the two versions
class Version:
    """One code version: its ``src``, its trained model and good .mtc under ``root/label``."""

    def __init__(self, label: str, src: str | Path, root: Path) -> None:
        self.label, self.src = label, Path(src).resolve()
        self.base = root / label / "base"
        self.env = {**os.environ, "PYTHONPATH": str(self.src), "PYTHONDONTWRITEBYTECODE": "1"}
        self.craft_env = {**self.env, "PYTHONPATH": f"{self.src}{os.pathsep}{ROOT / 'tests'}"}
        git = ["git", "-C", str(self.src), "rev-parse", "--short", "HEAD"]
        self.commit = subprocess.run(git, capture_output=True, text=True).stdout.strip()

    def argv(self, case: Case, folder: Path) -> list[str]:
        """The case's command line for this version, in ``folder``."""
        fill = {
            "case": folder,
            "ckpt": self.base / "good.ckpt",
            "train": self.src.parent / "train.py",
        }
        return [sys.executable, *(a.format(**fill) for a in case.argv)]

    def prepare(self, db: Path, logs: Path) -> None:
        """Train the tiny lossless model (good.ckpt) and compress ``db`` with it (good.mtc)."""
        self.base.mkdir(parents=True)
        run = self.base / "run"
        steps = {
            "train": [sys.executable, str(self.src.parent / "train.py"), *MODEL, "data=sqlite",
                      f"data.path={db}", "data.drop_invalid=true", f"paths.output_dir={run}"],
            "compress": [sys.executable, *codec("compress", f"ckpt_path={self.base / 'good.ckpt'}",
                                                f"data.path={db}", f"out={self.base / 'good.mtc'}")],
        }  # fmt: skip
        for step, argv in steps.items():
            result = run_one(argv, self.base, self.env, logs / f"{self.label}_{step}.log", 900)
            if result.rc != 0:
                raise SystemExit(f"{self.label}: {step} failed:\n{result.stderr[-3000:]}")
            if step == "train":
                shutil.copy(run / "checkpoints" / "best.ckpt", self.base / "good.ckpt")


def craft(env: dict[str, str], tasks: list[list[str]], logs: Path, name: str) -> dict[str, str]:
    """Run _hostile_craft.py's ``tasks`` in ``env``; {case folder: why it could not be made}."""
    if not tasks:
        return {}
    (logs / f"{name}.json").write_text(json.dumps(tasks))
    argv = [sys.executable, str(CRAFT), str(logs / f"{name}.json")]
    result = run_one(argv, ROOT, env, logs / f"{name}.log", 900)
    if result.rc != 0:
        raise SystemExit(f"crafting failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stderr.strip().splitlines()[-1])


def case_folder(version: Version, i: int, db: Path) -> Path:
    """A fresh folder: the database (and a link to it), a FIFO, the good .mtc, victim.txt."""
    folder = version.base.parent / f"{i:02d}"
    (folder / "w").mkdir(parents=True)
    shutil.copy(db, folder / "sim.db")
    shutil.copy(version.base / "good.mtc", folder / "a.mtc")
    (folder / "victim.txt").write_text("precious\n")
    (folder / "link.db").symlink_to(folder / "sim.db")
    os.mkfifo(folder / "fifo.db")
    return folder


# ---------------------------------------------------------------- running a case, by kind
def _plain(argv: list[str], folder: Path, v: Version, case: Case, log: Path):
    return [run_one(argv, folder, v.env, log)], None


def _fsize(argv: list[str], folder: Path, v: Version, case: Case, log: Path):
    limited = ["prlimit", f"--fsize={case.extra['fsize']}", "--", *argv]  # as ulimit -f
    return [run_one(limited, folder, v.env, log)], None


def _readonly(argv: list[str], folder: Path, v: Version, case: Case, log: Path):
    ro = folder / "ro"
    ro.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(ro)], capture_output=True
    )
    if mount.returncode != 0:  # chmod cannot stop root; without mount there is no such folder
        return [], "n/a (cannot mount a read-only folder here)"
    try:
        return [run_one(argv, folder, v.env, log)], None
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def _concurrent(argv: list[str], folder: Path, v: Version, case: Case, log: Path):
    start = time.monotonic()
    logs = [log.with_suffix(f".{i}.log") for i in (1, 2)]
    procs = [spawn(argv, folder, v.env, lg) for lg in logs]
    runs = [reap(p, lg, start, 2 * TIMEOUT_S) for p, lg in zip(procs, logs, strict=True)]
    return sorted(runs, key=lambda r: r.rc != 0), None  # the one that failed (if any) last


def _signal(argv: list[str], folder: Path, v: Version, case: Case, log: Path):
    start, out = time.monotonic(), folder / "w"
    proc = spawn(argv, folder, v.env, log)
    while not any(out.iterdir()) and proc.poll() is None and time.monotonic() - start < 60:
        time.sleep(0.02)
    if proc.poll() is not None:
        return [reap(proc, log, start)], "n/a (finished before the signal)"
    proc.send_signal(getattr(signal, case.extra["signal"]))
    return [reap(proc, log, start)], None


def _duplicates(argv: list[str], folder: Path, v: Version, case: Case, log: Path):
    """compress the database, verify (``argv``), decompress; verify passing on a file that does
    not restore the same states is a wrong result."""
    mtc, dup = folder / "d.mtc", folder / "dup.db"
    packed = [sys.executable, *codec("compress", f"ckpt_path={v.base / 'good.ckpt'}", f"data.path={dup}", f"out={mtc}")]  # fmt: skip
    runs = [run_one(packed, folder, v.env, log.with_suffix(".compress.log"))]
    if runs[0].rc != 0:
        return runs, None
    restore = [sys.executable, *codec("decompress", f"in={mtc}", f"out={folder / 'd.db'}")]
    runs.append(run_one(restore, folder, v.env, log.with_suffix(".decompress.log")))
    runs.append(run_one(argv, folder, v.env, log))
    restored, source = count_states(folder / "d.db"), count_states(dup)
    if runs[-1].rc == 0 and restored != source:
        got = "restore failed" if restored is None else f"restored {restored} of {source} states"
        return runs, f"WRONG RESULT (verify passed; {got})"
    return runs, None


KINDS = {"plain": _plain, "fsize": _fsize, "readonly": _readonly, "concurrent": _concurrent,
         "signal": _signal, "duplicates": _duplicates}  # fmt: skip


def execute(v: Version, case: Case, folder: Path, logs: Path, not_made: str | None) -> dict:
    """Run ``case`` in ``folder``: the cell and what it was made of."""
    if not_made:
        return {"outcome": "n/a (not crafted)", "why": not_made}
    before = snapshot(folder)
    log = logs / f"{v.label}_{folder.name}.log"
    runs, verdict = KINDS[case.kind](v.argv(case, folder), folder, v, case, log)
    if not runs:
        return {"outcome": verdict}
    wrote, lost = changes(folder, before)
    cell = outcome(case, runs, wrote, lost, temp_files(folder), verdict)
    errors = [line for r in runs for line in r.stderr.splitlines() if line.strip()]
    return {
        "outcome": cell,
        "exit": runs[-1].rc,
        "peak_mib": round(max(r.peak_mib for r in runs)),
        "seconds": round(sum(r.seconds for r in runs), 1),
        "last_line": errors[-1][:300] if errors else "",
    }


# ---------------------------------------------------------------- main
def table(versions: list[Version], rows: list[dict[str, Any]]) -> str:
    """The markdown table: case | route | one column per version."""
    names = {"before": "before ({})", "after": "after (this tree)"}
    heads = [names[v.label].format(v.commit) for v in versions]
    lines = ["| case | route | " + " | ".join(heads) + " |", "|---" * (2 + len(heads)) + "|"]
    for row in rows:
        cells = [row[v.label]["outcome"] for v in versions]
        lines.append(f"| {row['case']} | {row['route']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


KINDS_OF_OUTCOME = ("WROTE FILE", "DATA LOSS", "WRONG RESULT", "TIMEOUT", "MEMORY", "TRACEBACK",
                    "killed", "LEFT TEMP FILE", "ECHOES FILE BYTES", "one line", "ok", "n/a")  # fmt: skip


def counts(label: str, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Outcomes of one version by kind (sizes, exit codes and details folded), worst first."""
    kinds = Counter(
        next((k for k in KINDS_OF_OUTCOME if r[label]["outcome"].startswith(k)), "other")
        for r in rows
    )
    return {k: kinds[k] for k in (*KINDS_OF_OUTCOME, "other") if kinds[k]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--before", help="src folder of the version before (e.g. a worktree of ed7007f)"
    )
    parser.add_argument(
        "--after", default=str(ROOT / "src"), help="src folder (default: this tree's)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (heavy ones alone)")
    parser.add_argument("--only", nargs="+", default=[""], help="cases whose name contains one")
    parser.add_argument("--work", help="work folder (default: a temp folder, removed at the end)")
    args = parser.parse_args()
    started = time.monotonic()
    root = Path(args.work or tempfile.mkdtemp(prefix="hostile_")).resolve()
    logs = root / "logs"
    logs.mkdir(parents=True)
    versions = [Version("after", args.after, root)]
    if args.before:
        versions.insert(0, Version("before", args.before, root))
    after = versions[-1]
    cases = [c for c in CASES if any(o.lower() in c.name.lower() for o in args.only)]

    db = root / "sim.db"  # the same tiny database for both versions
    craft(after.craft_env, [["tiny_db", str(root), str(root)]], logs, "db")
    with ThreadPoolExecutor(len(versions)) as pool:
        list(pool.map(lambda v: v.prepare(db, logs), versions))
    folders = {(v.label, i): case_folder(v, i, db) for v in versions for i in range(len(cases))}
    common, own = [], {v.label: [] for v in versions}
    for (label, i), folder in folders.items():
        for task in cases[i].craft:
            base = str(next(v.base for v in versions if v.label == label))
            (own[label] if task.startswith("mtc_") else common).append([task, str(folder), base])
    not_made = craft(after.craft_env, common + own["after"], logs, "craft_after")
    if args.before:
        not_made.update(craft(versions[0].craft_env, own["before"], logs, "craft_before"))

    jobs = [(v, i) for i in range(len(cases)) for v in versions]
    heavy = [j for j in jobs if cases[j[1]].extra.get("heavy")]

    def one(job: tuple[Version, int]) -> dict[str, Any]:
        v, i = job
        folder = folders[(v.label, i)]
        return execute(v, cases[i], folder, logs, not_made.get(str(folder)))

    done = {j: one(j) for j in heavy}  # alone: the old decoder may take GBs
    light = [j for j in jobs if j not in done]
    with ThreadPoolExecutor(args.jobs) as pool:
        done.update(zip(light, pool.map(one, light), strict=True))

    rows = [
        {"case": c.name, "route": c.route, "expect": c.expect,
         **{v.label: done[(v, i)] for v in versions}}
        for i, c in enumerate(cases)
    ]  # fmt: skip
    print(table(versions, rows))
    results = new_results(args)
    results["data"] = {
        "versions": {v.label: {"src": str(v.src), "commit": v.commit} for v in versions},
        "cases": rows,
        "counts": {v.label: counts(v.label, rows) for v in versions},
        "seconds": round(time.monotonic() - started),
    }
    for v in versions:
        print(
            f"\n{v.label}: "
            + ", ".join(f"{k} {n}" for k, n in results["data"]["counts"][v.label].items())
        )
    print(f"\n{len(cases)} cases, {results['data']['seconds']} s")
    write_results("hostile_files", results)
    if not args.work:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
