"""Write output files atomically: a failure or Ctrl-C never leaves a partial file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path"]


@contextlib.contextmanager
def atomic_path(target: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``, else delete it.

    The temporary file is in the same directory so the final ``os.replace`` is atomic on POSIX and Windows.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
