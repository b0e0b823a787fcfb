"""Staging folders: where a command builds its output before renaming it into place.

A staging folder sits beside its destination as `.<name>.<tag>-<host>-<pid>-<start>-<random>`: the writer's
record (a hash of the host name, its process id and its start time in 1/100 s) is in the name, so it exists
from the folder's first instant. A process killed with SIGKILL runs no clean-up and leaves its staging folder
behind; the next staging folder made in the same parent removes those whose writer is gone, never the one of
a live writer or of a writer on another computer.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import warnings
from pathlib import Path

TAGS = ("staging", "building", "export")
# .<name>.<tag>-<host tag>-<pid>-<process start, 1/100 s>-<random>
RECORD = re.compile(
    r"\.(?P<tag>" + "|".join(TAGS) + r")-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[a-z0-9_]+$"
)


class StagingWarning(UserWarning):
    """A staging folder without a writer record (made by an earlier version) is left in place."""


def umask_mode(directory: bool = False) -> int:
    """The mode a plain `open()` or `mkdir()` would give a new file (0o666) or folder (0o777) under the umask."""
    umask = os.umask(0o022)  # reading the umask means setting it; it is put back at once
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def host_tag() -> str:
    """8 hex digits naming this computer (a process id means nothing on another one)."""
    return hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def _writer_alive(pid: int, start: int) -> bool:
    """True while process `pid`, started at `start` (1/100 s since the epoch), is running (not a zombie)."""
    import psutil

    try:
        process = psutil.Process(pid)
        started = round(process.create_time() * 100)
        return abs(started - start) <= 1 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # cannot tell: never remove the folder of a writer that may be alive


def remove_abandoned_staging(parent: str | Path) -> list[Path]:
    """Remove the staging folders in `parent` whose writer process is gone; returns the removed folders.

    Folders of a live writer, of a writer on another computer, and folders without a writer record (made by
    earlier versions; a StagingWarning names them) are left in place.
    """
    removed = []
    for tag in TAGS:
        for folder in sorted(Path(parent).glob(f".*.{tag}-*")):
            if not folder.is_dir() or folder.is_symlink():
                continue
            record = RECORD.search(folder.name)
            if record is None:
                warnings.warn(
                    f"{folder} is a staging folder without a writer record (an interrupted run of an earlier "
                    "version); remove it by hand when no advseg command is running.",
                    StagingWarning,
                    stacklevel=2,
                )
            elif record["host"] == host_tag() and not _writer_alive(int(record["pid"]), int(record["start"])):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def make_staging_dir(out_dir: str | Path, tag: str) -> Path:
    """A new staging folder beside `out_dir` with this process's record and the umask's mode (mkdtemp makes
    0o700), after removing the abandoned ones in the same parent."""
    import psutil

    if tag not in TAGS:
        raise ValueError(f"staging tag {tag!r} is not one of {TAGS}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(out_dir.parent)
    writer = psutil.Process()
    prefix = f".{out_dir.name}.{tag}-{host_tag()}-{writer.pid}-{round(writer.create_time() * 100)}-"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir.parent))
    staging.chmod(umask_mode(directory=True))
    return staging
