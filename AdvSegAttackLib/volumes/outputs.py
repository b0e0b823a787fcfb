"""Output folders: checked before a command does any work, locked while it writes them.

`claim_output_folder(out, inputs, writes)` is what every command with `--out` enters first. It refuses, with one
sentence naming `--out` (InputError, exit status 2):

- an `--out` that is one of the command's inputs, lies inside an input folder (a DICOM series, a case folder,
  `--adv-dir`: folders read as a whole), or holds an input at a name the command writes (`writes`: the names
  it creates or replaces at the top of `--out`; None = the whole folder is the command's);
- an `--out` that is an existing file, or a non-empty folder where the command needs a new one;
- an `--out` whose folder, or the folder above it (where staging folders and the lock go), cannot be
  written (permissions, an immutable or read-only folder): probed by creating and removing a temporary file;
- an `--out` that another command is writing: the folder is locked for the whole command with `filelock`
  (an flock on `.<name>.lock` beside the folder; the kernel drops it when a process dies, so a killed run
  can be resumed at once). The lock file stays after the command (filelock keeps it, so that processes
  waiting on it share one inode); it is empty and may be deleted when no command runs.

Under `torchrun` only rank 0 checks and holds the lock; every rank gets its outcome, so the ranks of one job
share the folder and all of them stop with the same sentence when it is refused.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from ..datasets.distributed import DistributedContext

#: (path, what it is): an input of a command, as the sentence names it, e.g. (Path("ct.nii.gz"), "--image").
Input = tuple[str | Path, str]


def _real(path: str | Path) -> Path:
    """Absolute path with every symlink resolved (also for a path that does not exist yet)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def lock_path(out: str | Path) -> Path:
    """The lock file of an output folder: `.<name>.lock` beside it (of the real path, so aliases share it)."""
    real = _real(out)
    return real.parent / f".{real.name}.lock"


def _overlap_sentence(
    out: Path, target: Path, inputs: Iterable[Input], writes: Sequence[str] | None
) -> str | None:
    for path, what in inputs:
        if path is None or str(path) == "":
            continue
        source = _real(path)
        if target == source:
            return f"--out {out} is {what} {path}; outputs never replace an input, give another --out."
        if source in target.parents and source.is_dir():
            return f"--out {out} is inside {what} {path}; outputs are never written into an input folder."
        if target in source.parents:
            name = source.relative_to(target).parts[0]
            if writes is None or any(fnmatch.fnmatch(name, pattern) for pattern in writes):
                return f"--out {out} contains {what} {path}, which this command would overwrite; give another --out."
    return None


def _nearest_folder(path: Path) -> Path:
    """`path` itself or its nearest existing ancestor."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _unwritable_sentence(out: Path, target: Path) -> str | None:
    folders = [target] if target.is_dir() else []
    above = _nearest_folder(target.parent)
    if not above.is_dir():
        return f"--out {out} cannot be made: {above} is a file, not a folder."
    folders.append(above)
    for folder in folders:
        try:
            handle, probe = tempfile.mkstemp(prefix=".advseg-write-test-", dir=folder)
            os.close(handle)
            os.unlink(probe)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            return f"--out {out} cannot be written: creating a file in {folder} failed ({reason})."
    return None


def check_output_folder(
    out: str | Path,
    inputs: Iterable[Input] = (),
    writes: Sequence[str] | None = None,
    must_be_new: bool = False,
) -> None:
    """InputError (one sentence) when the command must not, or cannot, write its output folder `out`.

    `inputs` are (path, what) of everything the command reads; `writes` the names (glob patterns) it creates
    or replaces at the top of `out` (None: the whole folder); `must_be_new`: `out` must not exist or be empty.
    """
    out = Path(out)
    target = _real(out)
    sentence = _overlap_sentence(out, target, inputs, writes)
    if sentence is None and target.exists() and not target.is_dir():
        sentence = f"--out {out} is an existing file; give a folder."
    if sentence is None and must_be_new and target.is_dir() and any(target.iterdir()):
        sentence = f"--out {out} already exists and is not an empty folder; give a new folder."
    sentence = sentence or _unwritable_sentence(out, target)
    if sentence:
        raise InputError(sentence)


def _share_outcome(sentence: str | None, ctx: DistributedContext | None) -> str | None:
    """Rank 0's sentence (or None) on every rank."""
    if ctx is None or not ctx.enabled:
        return sentence
    import torch.distributed as dist

    shared = [sentence]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


@contextlib.contextmanager
def claim_output_folder(
    out: str | Path,
    inputs: Iterable[Input] = (),
    writes: Sequence[str] | None = None,
    must_be_new: bool = False,
    ctx: DistributedContext | None = None,
) -> Iterator[Path]:
    """Check `out` (see `check_output_folder`) and hold its lock for the block; yields the lock file.

    A second command on the same folder is refused at once with one sentence naming the lock file (it does
    not wait). Under torchrun (`ctx` of the job) rank 0 checks and locks; every rank raises the same InputError.
    """
    from filelock import FileLock, Timeout

    path = lock_path(out)
    lock = FileLock(str(path), timeout=0) if ctx is None or ctx.is_main else None
    sentence = None
    if lock is not None:
        try:
            check_output_folder(out, inputs, writes, must_be_new)
            path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except InputError as error:
            sentence = str(error)
        except Timeout:
            sentence = (
                f"--out {out} is being written by another advseg command (it holds the lock {path}); "
                "wait until it has finished, or give another --out."
            )
    sentence = _share_outcome(sentence, ctx)
    if sentence:
        raise InputError(sentence)
    try:
        yield path
    finally:
        if lock is not None:
            lock.release()
