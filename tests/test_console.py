"""What a person sees: train.py's console in a terminal and in a log file, early stopping's line."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from conftest import REPO, TINY, train_cli

pytestmark = pytest.mark.slow

#: notices and warnings a user cannot act on, which a default run must not print
NOISE = ("Tip:", "GPU available", "TPU available", "LeafSpec", "logging interval", "sync_dist")


def run_in_terminal(*args: str, cols: int = 120) -> str:
    """``python train.py ARGS`` with stdout and stderr on a pseudo-terminal; what it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], cwd=REPO, stdout=slave, stderr=slave
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=240) == 0, b"".join(chunks).decode()[-3000:]
    return b"".join(chunks).decode()


def screen_lines(raw: str) -> list[str]:
    """Each line as a terminal leaves it: what follows the last carriage return."""
    return [line.rsplit("\r", 1)[-1] for line in raw.replace("\r\n", "\n").split("\n")]


def test_terminal_shows_one_bar_and_whole_epoch_lines(tmp_path: Path):
    raw = run_in_terminal(
        *TINY, "callbacks.progress_bar.refresh_rate=1", "test=false", f"paths.log_dir={tmp_path}"
    )
    assert "Epoch 1/2" in raw and "Epoch 2/2" in raw  # the bar counts from 1, of max_epochs
    assert "Epoch 0" not in raw and "Validation" not in raw and "Testing" not in raw
    epoch_lines = [s for s in screen_lines(raw) if "| train/loss" in s]
    assert len(epoch_lines) == 2
    for n, line in enumerate(epoch_lines, 1):  # on a line of its own, not glued to the bar
        assert line.startswith("["), line
        assert f"epoch {n}/2 |" in line
    assert not [w for w in NOISE if w in raw]


def test_log_file_output_has_no_bar_and_no_noise(tmp_path: Path):
    proc = train_cli(
        *TINY, "callbacks.progress_bar.refresh_rate=20", "test=false", f"paths.log_dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "\r" not in out and "it/s" not in out  # no carriage-return bar spam in files
    assert "epoch 1/2 |" in out and "epoch 2/2 |" in out
    assert not [w for w in NOISE if w in out]


def test_early_stopping_says_why(tmp_path: Path):
    proc = train_cli(
        *TINY,
        "trainer.max_epochs=5",
        "callbacks.early_stopping.patience=0",
        "callbacks.early_stopping.min_delta=1000",  # nothing after epoch 1 counts as better
        "test=false",
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if "early stopping" in s)
    assert "early stopping after epoch 2: val/loss has not improved by more than 1000" in line
    assert "for 1 epochs (patience 0)" in line and "at epoch 1" in line
    assert "epoch 3/5" not in proc.stdout
