"""Files in and out: atomic writes, exclusive creation, and the checks on a command's paths.

An output is written to a temp file beside its target and renamed when complete, so a reader
(or a resumed run) never sees a partial file. Outputs of the commands are created exclusively
unless ``overwrite``: of two writers racing for one name the second fails with one line. An
output is never one of the command's inputs (``os.path.samefile``, which sees through links).
"""

from __future__ import annotations

import errno
import glob
import os
import signal
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meaning_transform.errors import ConfigError, DataError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


TEMP_SUFFIX = ".tmp"  # atomic_write's temp files: ".<name>.<pid>.<random>.tmp" beside the target


def atomic_write(path: str | os.PathLike, write: Any, exclusive: bool = False) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file.

    ``exclusive``: fail (ConfigError) instead of replacing a file that appeared at ``path``
    meanwhile (the rename is a hard link, which the kernel refuses onto an existing name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        with _signals_held():  # a signal between creating and naming tmp would orphan it
            fd, tmp = tempfile.mkstemp(
                prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent
            )
            os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        if exclusive:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # name the file the user must fix
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


@contextmanager
def _signals_held() -> Iterator[None]:
    """Delay SIGINT and SIGTERM (delivered when the block ends) where the platform allows."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _link_new(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise ConfigError(
            f"{str(path)!r} was created by someone else while this ran; nothing was replaced"
        ) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # no hard links here (some network and FAT file systems): open O_EXCL, then replace
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        os.replace(tmp, path)
    os.unlink(tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete the temp files a killed ``atomic_write`` left in ``folder`` (for target ``name``)
    whose writer is no longer running; return them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = []
    for p in sorted(folder.glob(f".{name if name == '*' else glob.escape(name)}.*{TEMP_SUFFIX}")):
        parts = p.name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
        pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
        if p.is_file() and (pid is None or pid == os.getpid() or not _pid_alive(pid)):
            p.unlink(missing_ok=True)
            stale.append(p)
    return stale


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_input(path: Any, what: str) -> Path:
    """An existing regular file, or a one-line DataError (missing, a folder, FIFO, device)."""
    if not path:
        raise ConfigError(f"{what}= is required")
    p = Path(str(path)).expanduser()
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{what}={str(path)!r}: file not found") from None
    except OSError as e:
        raise DataError(f"{what}={str(path)!r}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{what}={str(path)!r} is {_kind(mode)}, not a file")
    return p


def check_output(
    out: Any, overwrite: bool, inputs: Mapping[str, Any] | None = None, what: str = "out"
) -> Path:
    """The output path, or a one-line ConfigError: missing, a folder or special file, existing
    without ``overwrite``, in a folder that does not exist or cannot be written, or the same
    file as one of ``inputs`` (whatever ``overwrite`` says). Stale temp files that a killed
    writer of this output left are removed."""
    if not out:
        raise ConfigError(f"{what}= is required: the file to write")
    path = Path(str(out)).expanduser()
    for name, given in (inputs or {}).items():
        if given and _same_file(path, Path(str(given)).expanduser()):
            raise ConfigError(
                f"{what}={str(out)!r} is the input {name}={str(given)!r}: writing it would "
                "destroy the input (overwrite=true does not allow this)"
            )
    if path.exists() or path.is_symlink():
        mode = path.stat().st_mode if path.exists() else 0
        if path.exists() and not stat.S_ISREG(mode):
            raise ConfigError(f"{what}={str(out)!r} is {_kind(mode)}; give a file path")
        if not overwrite:
            raise ConfigError(f"{what}={str(out)!r} exists; remove it or pass overwrite=true")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{what}={str(out)!r}: folder {str(parent)!r} does not exist")
    if os.statvfs(parent).f_flag & os.ST_RDONLY or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}={str(out)!r}: folder {str(parent)!r} is not writable")
    remove_stale_temp_files(parent, path.name)
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False
