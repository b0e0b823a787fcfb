"""The engine stops by itself when Slicer, or the launcher between Slicer and the engine, goes away.

A stand-in for Slicer (a small Python process) starts the engine exactly as the module does
(`AdvSegAttackSceneLib.process.engineLaunch`: the module's arguments, environment and working directory)
through a stand-in for ``PythonSlicer``, a launcher that runs the real Python as its own child. Mid-attack,
the test kills Slicer or the launcher with SIGKILL (what a crash does, and what Cancel did when it only
reached the launcher); the engine must exit within a few seconds and leave nothing partial: no ``--out``
folder and no hidden staging folder beside it. The engine's output goes to files here, so that it cannot
notice the loss of its parent through a broken pipe: only the watchdog can stop it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import attack_catalogue, save_tiny_model

psutil = pytest.importorskip("psutil")
pytest.importorskip("torch", reason="the attack needs torch")

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "AdvSegAttack"

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL of a process tree, as on Linux and macOS")

LAUNCHER = """\
#!{python}
# Stand-in for PythonSlicer: runs the real Python as its own child and waits for it.
import subprocess, sys
sys.exit(subprocess.call([{python!r}, *sys.argv[1:]]))
"""

SLICER = """\
# Stand-in for Slicer: starts the engine the way the module does, then waits (for SIGKILL).
import json, os, subprocess, sys, time
sys.path.insert(0, {moduleDir!r})
from AdvSegAttackSceneLib import catalogue, engine, process

values = json.loads(sys.argv[1])
attack = catalogue.AttackSpec.fromDict(values.pop("attack"))
request = engine.AttackRequest(attack=attack, choice=catalogue.AttackChoice(changed=values.pop("changed")), **values)
workDir = sys.argv[2]
launch = process.engineLaunch(
    request.arguments(), engine.findEngineRoot({moduleDir!r}), workDir, parentPid=os.getpid(), program=sys.argv[3]
)
with open(os.path.join(workDir, "stdout.txt"), "wb") as out, open(os.path.join(workDir, "stderr.txt"), "wb") as err:
    subprocess.Popen(
        [launch.program, *launch.arguments], env=launch.environment, cwd=launch.workingDirectory, stdout=out, stderr=err
    )
time.sleep(600)
"""


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("{")
    ]


@pytest.mark.slow  # 10-20 s each: the engine imports torch and MONAI before the attack starts
@pytest.mark.parametrize("killed", ["slicer", "launcher"])
def test_engine_stops_and_leaves_nothing_when_its_parent_is_killed(killed, tmp_path):
    from AdvSegAttackLib.volumes.phantom import write_phantom

    image, _label = write_phantom(0, tmp_path / "phantom", shape=(24, 24, 12), spacing=(6.0, 6.0, 6.0))
    model = save_tiny_model(tmp_path / "model", spacing_mm=6.0, roi=16)
    work = tmp_path / "work dir"
    work.mkdir()
    out = work / "case"
    request = {
        "image": str(image),
        "out": str(out),
        "model": str(model),
        "attack": next(a for a in attack_catalogue()["attacks"] if a["name"] == "pgd"),
        "changed": {"steps": 100000},  # runs far longer than the test waits
        "device": "cpu",
        "preview": False,
    }
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(LAUNCHER.format(python=sys.executable), encoding="utf-8")
    launcher.chmod(0o755)
    slicer = tmp_path / "slicer.py"
    slicer.write_text(SLICER.format(moduleDir=str(MODULE_DIR)), encoding="utf-8")
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    standIn = subprocess.Popen(
        [sys.executable, str(slicer), json.dumps(request), str(work), str(launcher)], env=environment
    )
    launcherProcess = engineProcess = None
    try:
        wait_for(
            lambda: (
                any(e.get("stage") == "attack" for e in events(work / "stdout.txt"))
                or standIn.poll() is not None
            ),
            240,
            "the attack to start",
        )
        assert standIn.poll() is None, (work / "stderr.txt").read_text(encoding="utf-8")
        tree = psutil.Process(standIn.pid).children(recursive=True)
        launcherProcess = next(p for p in tree if p.ppid() == standIn.pid)
        engineProcess = next(p for p in tree if p.ppid() == launcherProcess.pid)
        assert "AdvSegAttackLib.cli" in engineProcess.cmdline()
        assert engineProcess.cwd() == str(work)
        victim = standIn.pid if killed == "slicer" else launcherProcess.pid
        os.kill(victim, signal.SIGKILL)
        killedAt = time.monotonic()
        if killed == "slicer":
            standIn.wait()
        gone, _alive = psutil.wait_procs([engineProcess], timeout=10)
        seconds = time.monotonic() - killedAt
        assert gone, f"the engine still runs {seconds:.1f} s after its {killed} was killed"
        assert seconds < 10
    finally:
        survivors = [p for p in (engineProcess, launcherProcess) if p is not None]
        if standIn.poll() is None:
            survivors += [*psutil.Process(standIn.pid).children(recursive=True), psutil.Process(standIn.pid)]
        for process in survivors:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        standIn.wait()
    assert not out.exists(), "partial --out left behind"
    # the documented lock file `.case.lock` stays (filelock keeps it); no staging folder may
    assert sorted(p.name for p in work.iterdir() if p.name != f".{out.name}.lock") == [
        "stderr.txt",
        "stdout.txt",
    ], "staging folder left behind"
    last = events(work / "stdout.txt")[-1]
    assert last == {"event": "error", "message": "cancelled."}, textwrap.shorten(str(last), 300)
