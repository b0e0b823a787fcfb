"""Stop the engine when the program that started it goes away.

Slicer starts the engine as ``PythonSlicer -m AdvSegAttackLib.cli …``; ``PythonSlicer`` is a launcher that
runs the real Python as its own child. If Slicer closes or crashes, or Cancel kills only the launcher, the
engine would otherwise go on using the CPU or GPU with nobody to read its results. When the environment
variable ``ADVSEG_PARENT_PID`` names a process (the module sets it to Slicer's process ID), `cli.main`
starts a daemon thread that watches that process and every process between it and the engine (the
launcher). As soon as one of them is gone, the thread interrupts the main thread with SIGINT: the engine
raises KeyboardInterrupt, its staged output is removed (`io.staged_output_dir`), and it exits with status
130 and nothing partial on disk. If the main thread is stuck in native code for longer than
`GRACE_SECONDS`, the process is ended outright.
"""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time

from .errors import InputError

PARENT_PID_VARIABLE = "ADVSEG_PARENT_PID"
POLL_SECONDS = 0.5
GRACE_SECONDS = 30.0
EXIT_STATUS = 130  # as after Ctrl-C


def watched_processes(parent_pid: int) -> list:
    """The processes whose end must stop this one: `parent_pid` and every process between it and us.

    If `parent_pid` is not one of our ancestors (or is already gone), our own parent and `parent_pid`.
    """
    import psutil

    me = psutil.Process()
    chain = []
    for ancestor in me.parents():  # nearest first
        chain.append(ancestor)
        if ancestor.pid == parent_pid:
            return chain
    watched = [me.parent()] if me.parent() is not None else []
    try:
        watched.append(psutil.Process(parent_pid))
    except psutil.NoSuchProcess:
        watched.append(None)  # gone before we started: stop at once
    return watched


def _gone(process) -> bool:
    import psutil

    if process is None or not process.is_running():  # is_running() also notices a reused process ID
        return True
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by its own parent
    except psutil.NoSuchProcess:
        return True


def _interrupt_main_thread() -> None:
    """SIGINT to the main thread (it also wakes a blocking system call there); Windows: interrupt_main."""
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    else:  # pragma: no cover - Windows
        _thread.interrupt_main()


def _watch(watched: list, poll_seconds: float, grace_seconds: float) -> None:
    while not any(_gone(process) for process in watched):
        time.sleep(poll_seconds)
    _interrupt_main_thread()
    time.sleep(grace_seconds)
    os._exit(EXIT_STATUS)  # the main thread did not get back to Python in time


def start_parent_watchdog(
    environ=None, poll_seconds: float = POLL_SECONDS, grace_seconds: float = GRACE_SECONDS
) -> threading.Thread | None:
    """Start watching the process named by ``ADVSEG_PARENT_PID`` (call from the main thread).

    :return: the daemon thread, or None when the variable is not set.
    :raises InputError: if the variable is set but is not a process ID.
    """
    value = (os.environ if environ is None else environ).get(PARENT_PID_VARIABLE, "").strip()
    if not value:
        return None
    try:
        parent_pid = int(value)
    except ValueError:
        raise InputError(f"{PARENT_PID_VARIABLE}={value!r} is not a process ID.") from None
    if parent_pid <= 0:
        raise InputError(f"{PARENT_PID_VARIABLE}={value!r} is not a process ID.")
    # SIGINT must raise KeyboardInterrupt here even if the parent started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(
        target=_watch,
        args=(watched_processes(parent_pid), poll_seconds, grace_seconds),
        name="advseg-parent-watchdog",
        daemon=True,
    )
    thread.start()
    return thread
