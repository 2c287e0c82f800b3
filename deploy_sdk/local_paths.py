"""Paths the SDK reads are local files: a URL given where a path is expected is refused with a clear message.

``pathlib.Path("https://host/m.pth")`` collapses the double slash into ``https:/host/m.pth``, so without this
check a URL argument ends as "file not found: https:/host/m.pth", a path the user never typed. Nothing is
downloaded on the user's behalf (a checkpoint is code-free only when read by our loader from a file the user
chose; fetching is the user's step).
"""

from __future__ import annotations

import os
import re
from typing import Union

from deploy_sdk.errors import DeploySdkError

__all__ = ["is_url", "refuse_url"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(value: Union[str, os.PathLike[str]]) -> bool:
    """True for ``scheme://...`` text (http, https, s3, gs, ftp, file, ...)."""
    return isinstance(value, str) and bool(_URL.match(value))


def refuse_url(value: Union[str, os.PathLike[str]], what: str = "path") -> None:
    """Raise :class:`DeploySdkError` when ``value`` is a URL: say it is one and how to use the file."""
    if is_url(value):
        name = str(value).rstrip("/").rsplit("/", 1)[-1] or "FILE"
        how = f" (e.g. curl -L -o {name} '{value}')" if str(value).lower().startswith(("http", "ftp")) else ""
        raise DeploySdkError(
            f"{what} {value} is a URL; maskrcnn-deploy reads local files only: download it first{how} and pass "
            "the local path"
        )
