"""One engine child process as the Slicer module sees it: how it is started, what it says, how it ended.

Qt-free: the module's ``EngineProcess`` (a thin `qt.QProcess` wrapper) feeds an `EngineRun` with the bytes
the process writes and tells it how the process ended; the tests drive the same class with `subprocess`.

- `engineLaunch`: program, arguments, environment and working directory of ``PythonSlicer -m
  AdvSegAttackLib.cli …`` (a list of arguments, never a shell string). The environment names Slicer's
  process ID (``ADVSEG_PARENT_PID``), so the engine stops by itself when Slicer or the launcher goes away
  (`AdvSegAttackLib.watchdog`).
- `EngineRun`: stdout parsed as the JSON-lines progress protocol, stderr split into lines (decoded at line
  ends only), and the outcome: succeeded, cancelled, or failed with one sentence.
- `killProcessTree`: Cancel; ``PythonSlicer`` is a launcher whose child is the real Python, so the whole
  tree is killed (psutil), children first.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field

from . import progress
from .engine import childEnvironment, pythonSlicerExecutable

SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
STDERR_TAIL_LINES = 50


@dataclass(frozen=True)
class EngineLaunch:
    """Everything needed to start the engine: ``program`` with ``arguments``, in ``environment`` and
    ``workingDirectory``."""

    program: str
    arguments: list[str]
    environment: dict[str, str]
    workingDirectory: str

    def commandLine(self) -> str:
        """For the log only (the process is started with the argument list)."""
        return " ".join([self.program, *self.arguments])


def engineLaunch(
    arguments: list[str],
    engineRoot,
    workingDirectory,
    parentPid: int | None = None,
    baseEnvironment: dict[str, str] | None = None,
    program: str | None = None,
) -> EngineLaunch:
    """How the module starts the engine.

    :param arguments: after the program, e.g. `AttackRequest.arguments()` (``-m AdvSegAttackLib.cli …``).
    :param engineRoot: folder holding ``AdvSegAttackLib``; put first on ``PYTHONPATH``.
    :param workingDirectory: the case's own folder (never the install tree, which can be read-only).
    :param parentPid: the process whose end must stop the engine (Slicer: ``os.getpid()``).
    :param baseEnvironment: default: this process's environment.
    :param program: default: ``PythonSlicer``.
    """
    return EngineLaunch(
        program=program or pythonSlicerExecutable(),
        arguments=[str(argument) for argument in arguments],
        environment=childEnvironment(engineRoot, base=baseEnvironment, parentPid=parentPid),
        workingDirectory=os.fspath(workingDirectory),
    )


@dataclass
class EngineOutcome:
    """How a run ended: ``status`` is succeeded, failed or cancelled; ``message`` is one sentence for a
    failure; ``out`` is the folder the engine announced with its ``done`` event."""

    status: str
    message: str = ""
    out: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED

    @property
    def cancelled(self) -> bool:
        return self.status == CANCELLED


@dataclass
class EngineRun:
    """The output and the end of one engine process (attack, export, …), independent of how it runs.

    :param task: what the process does, for messages ("attack", "export").
    :param onEvent: called with every `progress.ProgressEvent` (progress, done, error and log lines).
    :param onLog: called with every stderr line and every stdout line that is not a protocol object.
    """

    task: str
    launch: EngineLaunch
    onEvent: object = None
    onLog: object = None
    errorMessage: str = ""
    doneOut: str = ""
    startError: str = ""
    cancelled: bool = False
    outcome: EngineOutcome | None = None
    stderrTail: deque = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))

    def __post_init__(self):
        self._stdout = progress.ProgressLineBuffer()
        self._stderr = progress.LineSplitter()

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def feedStdout(self, data: bytes) -> None:
        """Bytes the process wrote on stdout (any chunk size)."""
        self._handleEvents(self._stdout.feed(data))

    def feedStderr(self, data: bytes) -> None:
        """Bytes the process wrote on stderr (any chunk size)."""
        self._handleStderr(self._stderr.feed(data))

    def _handleEvents(self, events) -> None:
        for event in events:
            if event.kind == progress.DONE:
                self.doneOut = event.out
            elif event.kind == progress.ERROR:
                self.errorMessage = event.message
            elif event.kind == progress.LOG and self.onLog:
                self.onLog(event.message)
            if self.onEvent:
                self.onEvent(event)

    def _handleStderr(self, lines) -> None:
        for line in lines:
            if line.strip():
                self.stderrTail.append(line)
                if self.onLog:
                    self.onLog(line)

    def failedToStart(self, message: str) -> EngineOutcome:
        """The program could not be started (not found, not executable)."""
        self.startError = message
        return self.finish(exitCode=-1, crashed=True)

    def finish(self, exitCode: int, crashed: bool = False) -> EngineOutcome:
        """The process has ended (or was killed): parse what is left and decide the outcome (once)."""
        if self.outcome is not None:
            return self.outcome
        self._handleEvents(self._stdout.flush())
        self._handleStderr(self._stderr.flush())
        if self.cancelled:
            outcome = EngineOutcome(CANCELLED, "Cancelled.")
        elif self.startError:
            outcome = EngineOutcome(FAILED, self.startError)
        elif self.errorMessage:
            outcome = EngineOutcome(FAILED, self.errorMessage)
        elif crashed or exitCode != 0:
            message = f"The {self.task} process stopped with exit status {exitCode}; see the log for details."
            if self.stderrTail:
                message += f" Last message: {self.stderrTail[-1].strip()}"
            outcome = EngineOutcome(FAILED, message)
        else:
            outcome = EngineOutcome(SUCCEEDED, out=self.doneOut)
        self.outcome = outcome
        return outcome


def killProcessTree(pid: int, timeout: float = 5.0) -> list[int]:
    """Kill a process and all its descendants, children first, and wait for the descendants to go.

    The process itself is killed but not waited for: its parent (`qt.QProcess`, `subprocess.Popen`) reaps it.

    :return: the process IDs that were killed (none if the process was already gone).
    """
    import psutil

    try:
        root = psutil.Process(pid)
        descendants = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    killed = []
    for process in [*descendants, root]:
        try:
            process.kill()
            killed.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(descendants, timeout=timeout)
    return killed
