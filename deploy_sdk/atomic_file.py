"""Write output files atomically: a failure, Ctrl-C or SIGTERM never leaves a partial file behind.

Temporary files and folders get the mode a plain ``open(path, "w")`` / ``os.mkdir(path)`` would give them (0666 /
0777 minus the umask), so finished outputs have the usual permissions rather than ``tempfile``'s private 0600 /
0700. A write that fails for a reason of the file system (a folder or device where a file should go, no such
folder, not a folder, no space, read-only, no permission) raises :class:`OutputPathError`: one line, "cannot write
PATH: reason". :func:`check_output_file` and :func:`check_output_dir` ask the same questions up front, so that a
command can refuse a bad output path before its slow work rather than after it. :func:`file_sha256` hashes a
file the way the checkpoint loader and the plugin cache both record it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from pathlib import Path
from typing import Iterable, Iterator, TypeGuard, Union

from deploy_sdk.errors import DeploySdkError

__all__ = ["file_sha256", "atomic_path", "make_temp_dir", "OutputPathError", "check_output_file", "check_output_dir"]

PathLike = Union[str, os.PathLike]

# errno values that say "the file system refused the write", whichever file the writer was touching.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


class OutputPathError(DeploySdkError):
    """An output file or folder cannot be written: a folder or device where a file should go, a file where a
    folder should be, no permission, a read-only or full file system."""


def cannot_write(path: PathLike, reason: Union[OSError, str]) -> OutputPathError:
    """The one-line error for an output that cannot be written: ``cannot write PATH: reason``."""
    if isinstance(reason, OSError):
        reason = reason.strerror or str(reason)
    return OutputPathError(f"cannot write {os.fspath(path)}: {reason}")


def _temp_name(parent: Path, name: str) -> Path:
    return parent / f".{name}.{secrets.token_hex(4)}.partial"


def _create_temp_file(parent: Path, name: str) -> Path:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        candidate = _temp_name(parent, name)
        try:
            os.close(os.open(candidate, flags, 0o666))  # the umask applies, as for any new file
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "no free temporary name", os.fspath(parent))


def make_temp_dir(parent: PathLike, name: str) -> Path:
    """Create and return an empty folder ``parent/.NAME.XXXXXXXX.partial`` with the umask-derived mode (0777 minus
    the umask, like ``mkdir``; ``tempfile.mkdtemp`` would make it 0700)."""
    parent = Path(parent)
    for _ in range(100):
        candidate = _temp_name(parent, name)
        try:
            os.mkdir(candidate, 0o777)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "no free temporary name", os.fspath(parent))


def _is_write_error(exc: BaseException, *paths: Path) -> TypeGuard[OSError]:
    if not isinstance(exc, OSError):
        return False
    names = {os.fspath(p) for p in paths}
    return exc.errno in _WRITE_ERRNOS or exc.filename in names or exc.filename2 in names


def _check_folder_writable(folder: Path, target: Path) -> None:
    """``folder`` is, or can be created as, a folder that accepts new files; else :class:`OutputPathError`."""
    existing = folder
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise cannot_write(target, os.strerror(errno.ENOTDIR))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise cannot_write(target, os.strerror(errno.EACCES))
    with contextlib.suppress(OSError, AttributeError):
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            raise cannot_write(target, os.strerror(errno.EROFS))


def _check_file_target(target: Path) -> None:
    if target.is_dir():
        raise cannot_write(target, "it is a folder; give a file name")
    if os.path.lexists(target) and not target.is_file():
        # Never rename a regular file over a device (/dev/null), a pipe or a socket.
        raise cannot_write(target, "it exists and is not a regular file")


def check_output_file(path: PathLike, suffixes: Iterable[str] = (), what: str = "output file") -> Path:
    """Refuse, before any slow work, an output file path that :func:`atomic_path` could not write.

    Checks that ``path`` is not a folder or a device, that the nearest existing folder above it is a writable
    folder, and (with ``suffixes``, e.g. ``(".onnx",)``) that the name ends in one of them. The file system can
    still refuse the write later (e.g. when it fills up); :func:`atomic_path` reports that as one line too.
    """
    path = Path(path)
    suffixes = tuple(s.lower() for s in suffixes)
    _check_file_target(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputPathError(f"{what} {path} must end in {' or '.join(suffixes)}")
    _check_folder_writable(path.parent, path)
    return path


def check_output_dir(path: PathLike, what: str = "output folder") -> Path:
    """Refuse, before any slow work, an output folder that is a file or cannot be created or written to."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise cannot_write(path, f"{what} exists and is not a folder")
    _check_folder_writable(path, path)
    return path


@contextlib.contextmanager
def atomic_path(target: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``, else delete it.

    The temporary file is in the same directory so the final ``os.replace`` is atomic on POSIX and Windows. It
    is created empty with mode 0666 minus the umask. An :class:`OSError` of the file system while creating,
    writing (in the ``with`` body) or renaming becomes :class:`OutputPathError` naming ``target``; any other
    exception passes through unchanged. Either way the temporary file is deleted.
    """
    target = Path(target)
    try:
        _check_file_target(target)
        _check_folder_writable(target.parent, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _create_temp_file(target.parent, target.name)
    except OSError as exc:
        raise cannot_write(target, exc) from exc
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if _is_write_error(exc, tmp_path, target):
            raise cannot_write(target, exc) from exc
        raise


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
