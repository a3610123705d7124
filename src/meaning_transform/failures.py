"""What happens when a run fails: one line for the user, ``failed.json`` for a sweep's job.

The one writer of ``failed.json`` (error, overrides, traceback in the job's run directory): the
training code calls ``record_failure`` for the error it caught, and the sweep callback calls
``write_failed_json`` for a job that failed outside it (it keeps a record training wrote, which
knows more).
"""

from __future__ import annotations

import errno
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from meaning_transform.errors import USER_ERRORS
from meaning_transform.io import atomic_write

log = logging.getLogger("meaning_transform")

FAILED_JSON = "failed.json"
#: storage failures while a run writes: reported as one line (exit code 1), not a traceback
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def write_failed_json(
    out_dir: str | Path, error: str, overrides: list[str], tb: str | None
) -> Path:
    """Write ``failed.json`` into ``out_dir`` unless one is there already; its path."""
    path = Path(out_dir) / FAILED_JSON
    if not path.exists():
        record = {"error": error, "overrides": overrides, "traceback": tb}
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    return path


def record_failure(error: BaseException) -> None:
    """Log and record the error a Hydra multirun job caught (its run dir's ``failed.json``)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    log.error("job %s failed: %s: %s", hc.job.num, type(error).__name__, error)
    write_failed_json(
        hc.runtime.output_dir,
        f"{type(error).__name__}: {error}",
        list(hc.overrides.task),
        "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    )


def exit_for(error: BaseException) -> NoReturn:
    """End the process for ``error``: a user error or a storage failure is one line on stderr
    (exit 2 / 1); anything else is a bug and propagates with its traceback."""
    if isinstance(error, USER_ERRORS):
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:  # a full disk, a read-only mount
        print(
            f"error: cannot write {error.filename or 'the run directory'}: {error.strerror}",
            file=sys.stderr,
        )
        sys.exit(1)
    raise error
