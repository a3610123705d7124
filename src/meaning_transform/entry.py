"""Running a command (evaluate, codec): every failure a user can cause or meet is one line on
stderr and an exit code, and a signal ends the command cleanly.

- a user error (``USER_ERRORS``) or a failed read/write (a read-only folder, a full disk, a
  file-size limit; as an OSError or as SQLite's error): ``error: <one line>``, exit 2;
- SIGINT (Ctrl-C) and SIGTERM: the temp file of an output being written is removed (they are
  raised as exceptions, so ``io.atomic_write`` cleans up), then ``error: interrupted``, exit
  130 / 143;
- SIGXFSZ (``ulimit -f`` reached) is ignored, so the write fails with EFBIG and is reported
  like a full disk instead of killing the process with a temp file left behind.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from meaning_transform.errors import USER_ERRORS
from meaning_transform.messages import one_line


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def run_command(
    work: Callable[[], str], extra: dict[type[BaseException], int] | None = None
) -> int:
    """Run ``work`` (its result printed on stdout) and return the exit code; ``extra`` maps
    more exception types to exit codes (reported as ``error: ...`` too)."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        print(work())
        return 0
    except KeyboardInterrupt:
        return _fail("interrupted (SIGINT); no output was left behind", 130)
    except Terminated:
        return _fail("terminated (SIGTERM); no output was left behind", 143)
    except USER_ERRORS as e:
        return _fail(one_line(e), 2)
    except OSError as e:
        what = f" {e.filename}" if e.filename else ""
        return _fail(f"cannot read or write{what}: {e.strerror or one_line(e)}", 2)
    except sqlite3.Error as e:  # e.g. "disk I/O error" when a write hits a full disk
        hint = " (a full disk or a file size limit?)" if "I/O" in str(e) else ""
        return _fail(f"cannot read or write a database: SQLite says {one_line(e)}{hint}", 2)
    except tuple(extra or {}) as e:
        prefix = getattr(e, "prefix", "")
        return _fail(f"{prefix}{one_line(e)}", (extra or {})[type(e)])
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
