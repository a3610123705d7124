"""Running one hostile case of benchmarks/hostile_files.py and naming what happened.

Each command is a fresh process of the version under test (its ``src`` alone on
``PYTHONPATH``), in the case's own folder, reaped with ``os.wait4`` for its own peak resident
memory (this process imports no torch, so the fork adds little to it), killed after 60 s. The
outcome, worst first: ``WROTE FILE`` (the marker appeared or victim.txt changed), ``DATA LOSS``
(a file that was there before changed or vanished), ``WRONG RESULT`` (exit 0 where the input
must be refused, or a case's own check failed), ``TIMEOUT``, ``MEMORY x GB`` (over 1 GiB),
``TRACEBACK``, ``killed by SIG...``, ``LEFT TEMP FILE``, ``ECHOES FILE BYTES``, then
``one line, exit N`` (a clean refusal) or ``ok``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMEOUT_S = 60
MEMORY_LIMIT_MIB = 1024
SECRET = "SECRET-TOKEN"  # what _hostile_craft.secret_db holds


@dataclass(frozen=True)
class Case:
    """One hostile input through one route.

    ``argv``: the command after ``python``, with ``{case}``, ``{ckpt}`` and ``{train}``
    filled in; ``expect``: ``refuse``, ``ok`` or ``either``; ``craft``: _hostile_craft tasks;
    ``kind``: ``plain``, ``concurrent``, ``signal`` (``extra["signal"]``), ``fsize``
    (``extra["fsize"]`` bytes), ``readonly`` (``{case}/ro`` is a read-only mount) or
    ``duplicates`` (compress, verify, decompress, then the rows are counted); ``say``: what a
    refusal must name (else it is marked ``wrong reason``).
    """

    name: str
    route: str
    argv: tuple[str, ...]
    expect: str = "refuse"
    craft: tuple[str, ...] = ()
    kind: str = "plain"
    say: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """One finished process."""

    rc: int
    stderr: str
    peak_mib: float
    seconds: float
    timed_out: bool = False


def spawn(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``argv`` in its own session with stdout and stderr to ``log``."""
    with open(log, "wb") as fh:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def reap(proc: subprocess.Popen, log: Path, start: float, timeout: float = TIMEOUT_S) -> Run:
    """Wait for ``proc`` (killing its session at ``timeout``): its exit, output, own peak."""
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - start > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            timed_out = True
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    return Run(proc.returncode, text, usage.ru_maxrss / 1024, time.monotonic() - start, timed_out)


def run_one(
    argv: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float = TIMEOUT_S
) -> Run:
    """``argv`` to the end (or ``timeout``)."""
    start = time.monotonic()
    return reap(spawn(argv, cwd, env, log), log, start, timeout)


# ---------------------------------------------------------------- what changed on disk
def snapshot(folder: Path) -> dict[Path, str]:
    """SHA-256 of every regular file under ``folder``."""
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def changes(folder: Path, before: dict[Path, str]) -> tuple[bool, list[str]]:
    """(whether the marker appeared or victim.txt changed, other files changed or gone)."""
    now = snapshot(folder)
    victim = folder / "victim.txt"
    wrote = (folder / "pwned").exists() or now.get(victim) != before.get(victim)
    lost = [p.name for p, digest in before.items() if p != victim and now.get(p) != digest]
    return wrote, lost


def temp_files(folder: Path) -> list[str]:
    """Files a writer left half-written (``*.tmp``)."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- the outcome
def outcome(
    case: Case,
    runs: list[Run],
    wrote: bool,
    lost: list[str],
    left: list[str],
    verdict: str | None = None,
) -> str:
    """The cell of the table for ``runs`` (the last one decides the exit); ``verdict``: what
    a case's own check found wrong (a restore that does not match, say)."""
    last = runs[-1]
    text = "".join(r.stderr for r in runs)
    peak = max(r.peak_mib for r in runs)
    if wrote:
        return "WROTE FILE"
    if lost:
        return "DATA LOSS (" + ", ".join(lost) + ")"
    if verdict:
        return verdict
    if last.rc == 0 and case.expect == "refuse":
        return "WRONG RESULT"
    if any(r.timed_out for r in runs):
        return f"TIMEOUT {TIMEOUT_S} s"
    if peak > MEMORY_LIMIT_MIB:
        return f"MEMORY {peak / 1024:.1f} GB"
    if "Traceback" in text:
        return "TRACEBACK"
    if last.rc < 0:
        return f"killed by {signal.Signals(-last.rc).name}" + (", LEFT TEMP FILE" if left else "")
    if left:
        return "LEFT TEMP FILE"
    if SECRET in text:
        return f"ECHOES FILE BYTES, exit {last.rc}"
    if last.rc == 0:
        return "ok"
    lines = [line for line in last.stderr.splitlines() if line.strip()]
    cell = f"{'one line' if len(lines) == 1 else f'{len(lines)} lines'}, exit {last.rc}"
    if case.say and case.say not in last.stderr:
        cell += " (wrong reason)"
    if case.expect == "ok":
        cell += " (a valid input refused)"
    return cell


def count_states(db: Path) -> int | None:
    """Rows of agent_states in ``db`` (None when it cannot be read)."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT COUNT(*) FROM agent_states").fetchone()[0]
    except sqlite3.Error:
        return None
