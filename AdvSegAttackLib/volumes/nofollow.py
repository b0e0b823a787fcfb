"""No symbolic link is followed inside a session or case folder.

A link (or a FIFO, device or socket) inside such a folder could make the tool read an arbitrary file into a
bundle or a report, or append ratings to a file elsewhere. Every read or write of a file inside a session or
case folder first passes `inside(root, path)`: no component below `root` may be a link, every folder
between must be a real folder, and the file itself a regular file (or absent: the caller decides what a
missing file means). Appends open with `O_NOFOLLOW` (`open_nofollow`); other writes are atomic (a fresh
temporary file, renamed over the name, which replaces a link instead of writing through it).

The folder named on the command line (`root`) may itself be a link: that is where the user chose to keep
the session or case, and it is resolved once like any path they type.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import InputError

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # absent on Windows, where `inside` still refuses links
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO that slipped in must not block the open


def _problem(path: Path, mode: int, root: Path) -> str | None:
    if stat.S_ISLNK(mode):
        return (
            f"{path} is a symbolic link; links inside {root} are never followed (put the file itself there)."
        )
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return f"{path} is not a regular file or folder (a FIFO, device or socket); it is never opened."
    return None


def inside(root: str | Path, path: str | Path) -> Path:
    """`path` (below `root`), after checking that it and every folder between `root` and it are real.

    :raises InputError: one sentence naming the first component that is a symbolic link, not a folder where
      a folder is needed, or a FIFO/device/socket. A component that does not exist ends the check.
    """
    root, path = Path(root), Path(path)
    current = root
    parts = path.relative_to(root).parts
    for index, part in enumerate(parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return path
        problem = _problem(current, mode, root)
        if problem is None and index < len(parts) - 1 and not stat.S_ISDIR(mode):
            problem = f"{current} is a file where {root} needs a folder."
        if problem:
            raise InputError(problem)
    return path


def open_nofollow(path: str | Path, flags: int, mode: int = 0o666) -> int:
    """`os.open` that refuses a link as the last component and anything but a regular file; a file descriptor."""
    try:
        descriptor = os.open(path, flags | O_NOFOLLOW | O_NONBLOCK, mode)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENXIO):  # ENXIO: a FIFO without a reader
            raise
        raise InputError(f"{path} is a symbolic link or not a regular file; it is never opened.") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise InputError(f"{path} is not a regular file; it is never written.")
    return descriptor


def irregular_entries(root: str | Path) -> list[str]:
    """One sentence for every link or FIFO/device/socket below `root` (links are listed, not followed)."""
    root = Path(root)
    problems = []
    for folder, folders, files in os.walk(root):
        for name in sorted(folders + files):
            path = Path(folder) / name
            problem = _problem(path, os.lstat(path).st_mode, root)
            if problem:
                problems.append(problem)
    return problems
