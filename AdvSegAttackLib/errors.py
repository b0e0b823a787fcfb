"""The one exception type for bad user input, and the log of unexpected errors."""

from __future__ import annotations

import os
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path

#: Folder of the error logs instead of the platform's user log folder (tests, shared machines).
LOG_DIR_ENV = "ADVSEG_LOG_DIR"


class InputError(Exception):
    """Bad input: the message is one sentence naming the file or option and what is wrong.

    The CLI prints it (no traceback) and exits with status 2; nothing partial is left on disk.
    """


def log_dir() -> Path:
    """Where error logs go: $ADVSEG_LOG_DIR, else the platform's user log folder (platformdirs), e.g.
    `~/.local/state/advseg/log` on Linux, `~/Library/Logs/advseg` on macOS, `%LOCALAPPDATA%\\advseg\\Logs`."""
    override = os.environ.get(LOG_DIR_ENV)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_log_dir("advseg", appauthor=False))


def write_error_log(error: BaseException, command_line: str) -> Path | None:
    """Write the command line and the full traceback of `error` to a new log file; returns its path.

    Falls back to the system temporary folder when the log folder cannot be written; None when neither can.
    """
    now = datetime.now(timezone.utc)
    text = f"{now.isoformat(timespec='seconds')} pid {os.getpid()}\n{command_line}\n\n" + "".join(
        traceback.format_exception(error)
    )
    name = f"advseg-{now.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    for folder in (log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def describe_error(error: BaseException) -> str:
    """`TypeName: first line of the message` (at most 300 characters), or the type name alone."""
    text = str(error).strip()
    first = text.splitlines()[0][:300].rstrip(".") if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def unexpected_error_sentence(error: BaseException, log: Path | None) -> str:
    """The one sentence a command ends with after an unexpected error (exit status 1)."""
    where = f"the full traceback is in {log}" if log else "no log file could be written"
    return f"unexpected error ({describe_error(error)}); {where} (--debug prints it)."
