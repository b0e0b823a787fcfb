"""The engine child process as the Slicer module runs it, without Qt (`AdvSegAttackSceneLib.process`).

The module's `EngineProcess` only moves bytes from a `qt.QProcess` into an `EngineRun` and kills the process
tree on Cancel; everything else is here and runs with `subprocess`: the launch (program, arguments,
environment, working directory), stdout and stderr split into lines whatever the chunk boundaries, and the
one-sentence outcome. The engine runs for real (`python -m AdvSegAttackLib.cli export`, no torch needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import write_case_folder

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "AdvSegAttack"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from AdvSegAttackSceneLib import engine, process, progress  # noqa: E402

pytestmark = pytest.mark.torchfree


def feed_in_chunks(feed, data: bytes, size: int) -> None:
    for start in range(0, len(data), size):
        feed(data[start : start + size])


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_line_splitter_decodes_whole_lines_only(size):
    text = "première ligne\r\n“quoted” 3 mm³\n\nlast line without newline: ½ ✓"
    splitter = progress.LineSplitter()
    lines = []
    feed_in_chunks(lambda chunk: lines.extend(splitter.feed(chunk)), text.encode("utf-8"), size)
    assert lines == ["première ligne", "“quoted” 3 mm³", ""]  # every cut mid-line and mid-character healed
    assert splitter.flush() == ["last line without newline: ½ ✓"]
    assert splitter.flush() == []
    assert progress.LineSplitter().feed(b"caf\xc3") == []  # half a character is kept, not replaced


def test_stderr_split_mid_character_gives_whole_last_message():
    launch = process.EngineLaunch("python", [], {}, ".")
    logged = []
    run = process.EngineRun("attack", launch, onLog=logged.append)
    stderr = "Traceback (most recent call last):\n  ...\nRuntimeError: Fichier déjà écrit ‘x’\n".encode()
    feed_in_chunks(run.feedStderr, stderr, 1)
    outcome = run.finish(exitCode=1)
    assert outcome.status == process.FAILED
    assert outcome.message == (
        "The attack process stopped with exit status 1; see the log for details. "
        "Last message: RuntimeError: Fichier déjà écrit ‘x’"
    )
    assert logged[-1] == "RuntimeError: Fichier déjà écrit ‘x’"
    assert run.finish(exitCode=0) is outcome  # decided once


def test_outcomes():
    launch = process.EngineLaunch("python", [], {}, ".")
    events = []
    run = process.EngineRun("export", launch, onEvent=events.append)
    data = b'{"event": "progress", "stage": "export", "step": 1, "total": 2}\nstray print\n{"event": "done", "out": "/b"}'
    feed_in_chunks(run.feedStdout, data, 4)
    outcome = run.finish(exitCode=0)
    assert outcome.succeeded and outcome.out == "/b"
    assert [e.kind for e in events] == ["progress", "log", "done"]

    failed = process.EngineRun("export", launch)
    failed.feedStdout(b'{"event": "error", "message": "The case folder is gone."}\n')
    assert failed.finish(exitCode=2).message == "The case folder is gone."

    cancelled = process.EngineRun("export", launch)
    cancelled.cancelled = True
    assert cancelled.finish(exitCode=-9, crashed=True).cancelled

    missing = process.EngineRun("export", launch)
    assert missing.failedToStart("Could not start PythonSlicer.").message == "Could not start PythonSlicer."


def run_engine(launch: process.EngineLaunch, run: process.EngineRun, chunk: int = 7) -> process.EngineOutcome:
    """Run a launch the way EngineProcess does (here with subprocess), feeding output in small chunks."""
    completed = subprocess.run(
        [launch.program, *launch.arguments],
        env=launch.environment,
        cwd=launch.workingDirectory,
        capture_output=True,
        timeout=300,
    )
    feed_in_chunks(run.feedStdout, completed.stdout, chunk)
    feed_in_chunks(run.feedStderr, completed.stderr, chunk)
    return run.finish(completed.returncode)


def test_engine_export_runs_from_the_case_folder(tmp_path, real_ct_small):
    """The module's export: launched in the case's own folder, with the engine root on PYTHONPATH."""
    case = write_case_folder(real_ct_small, tmp_path / "case")
    bundle = tmp_path / "bundle dir"
    arguments = [
        "-m",
        engine.ENGINE_CLI_MODULE,
        "export",
        str(case),
        "--out",
        str(bundle),
        "--progress",
        "jsonl",
    ]
    launch = process.engineLaunch(
        arguments, engine.findEngineRoot(MODULE_DIR), case, parentPid=os.getpid(), program=sys.executable
    )
    assert launch.workingDirectory == str(case)
    assert launch.environment["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    assert launch.environment[engine.PARENT_PID_VARIABLE] == str(os.getpid())
    fractions = []
    run = process.EngineRun(
        "export",
        launch,
        onEvent=lambda e: fractions.append(e.stageFraction) if e.kind == "progress" else None,
    )
    outcome = run_engine(launch, run)
    assert outcome.succeeded, (outcome.message, list(run.stderrTail))
    assert Path(outcome.out) == bundle and (bundle / "manifest.json").is_file()
    assert fractions and fractions[-1] == 1.0

    again = process.EngineRun("export", launch)
    refused = run_engine(launch, again, chunk=3)  # the bundle exists now
    assert refused.status == process.FAILED
    assert "already exists" in refused.message and str(bundle) in refused.message


def test_kill_process_tree_kills_the_launcher_and_the_engine(tmp_path):
    """PythonSlicer is a launcher whose child is the real Python: Cancel must end both."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(
        textwrap.dedent(
            """
            import subprocess, sys
            child = subprocess.Popen([sys.executable, "-c", "import time; print('engine', flush=True); time.sleep(300)"])
            print(child.pid, flush=True)
            sys.exit(child.wait())
            """
        ),
        encoding="utf-8",
    )
    started = subprocess.Popen([sys.executable, str(launcher)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(started.stdout.readline())
        assert started.stdout.readline().strip() == "engine"
        killed = process.killProcessTree(started.pid)
        assert killed == [child, started.pid]
        assert started.wait(timeout=10) != 0
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
        assert process.killProcessTree(started.pid) == []  # already gone
    finally:
        if started.poll() is None:
            started.kill()
            started.wait()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_progress_protocol_lines_round_trip_through_the_run():
    """Events the engine's JsonLinesReporter writes come back as the same events, whatever the chunking."""
    from AdvSegAttackLib.progress import JsonLinesReporter

    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    sink = Sink()
    reporter = JsonLinesReporter(sink)
    reporter.progress("attack", 3, 20, loss=0.71)
    reporter.error("Die Datei „x“ fehlt.")
    events = []
    run = process.EngineRun("attack", process.EngineLaunch("p", [], {}, "."), onEvent=events.append)
    feed_in_chunks(run.feedStdout, sink.text.encode(), 1)
    assert [json.loads(line)["event"] for line in sink.text.splitlines()] == ["progress", "error"]
    assert events[0].describe() == "Attacking: step 3/20, loss 0.71"
    assert run.finish(2).message == "Die Datei „x“ fehlt."


def test_the_module_and_the_engine_agree_on_the_watchdog_variable():
    from AdvSegAttackLib import watchdog
    from AdvSegAttackLib.errors import InputError

    assert engine.PARENT_PID_VARIABLE == watchdog.PARENT_PID_VARIABLE
    assert watchdog.start_parent_watchdog({}) is None  # not started from Slicer: nothing is watched
    for value in ("slicer", "-3", "0"):
        with pytest.raises(InputError, match=f"ADVSEG_PARENT_PID={value!r} is not a process ID"):
            watchdog.start_parent_watchdog({watchdog.PARENT_PID_VARIABLE: value})
    assert engine.PARENT_PID_VARIABLE not in engine.childEnvironment(None, base={"ADVSEG_PARENT_PID": "1"})
