"""Progress on stderr: tqdm bars with units on a terminal, one-line stage messages elsewhere (JSON lines are
tested with the pipeline)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios

import pytest
from conftest import save_tiny_model

from AdvSegAttackLib.progress import LogReporter, StageCounter, TqdmReporter, make_reporter


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TerminalText(io.StringIO):
    """A text stream that says it is a terminal, as tqdm checks."""

    def isatty(self) -> bool:
        return True


def test_log_lines_per_stage_not_per_step():
    stream, clock = io.StringIO(), Clock()
    reporter = LogReporter(stream, clock)
    for step in range(0, 101):  # 100 steps of 3 s: a long stage
        reporter.progress("attack", step, 100, loss=1.0 / (step + 1))
        clock.now += 3.0
    for done in range(0, 81, 4):  # 80 quick windows
        reporter.progress("segment-adv", done, 80)
        clock.now += 0.01
    reporter.done("out")
    lines = stream.getvalue().splitlines()
    assert all(line.startswith("advseg: ") for line in lines)
    attack = [line for line in lines if line.startswith("advseg: attack:")]
    assert attack[0] == "advseg: attack: started (100 steps)"
    assert attack[-1].startswith("advseg: attack: done, 100 steps in 300.0 s, 3.00 s/step, loss")
    assert len(attack) == 11  # start, 10 %, 20 %, ... 90 %, done
    assert "attack: 50/100 steps (50 %), 150.0 s, loss" in stream.getvalue()
    windows = [line for line in lines if "segment-adv" in line]
    assert len(windows) == 2 and windows[0] == "advseg: segment-adv: started (80 windows)"
    assert windows[1].startswith("advseg: segment-adv: done, 80 windows in 0.2 s")


def test_log_heartbeat_on_a_slow_stage_and_stop_on_error():
    stream, clock = io.StringIO(), Clock()
    reporter = LogReporter(stream, clock)
    reporter.progress("attack", 0, 1000)
    clock.now += 45.0  # no 10 % step in 45 s: a heartbeat line anyway
    reporter.progress("attack", 3, 1000)
    reporter.error("--eps must be >= 0.")
    assert stream.getvalue().splitlines() == [
        "advseg: attack: started (1000 steps)",
        "advseg: attack: 3/1000 steps (0 %), 45.0 s",
        "advseg: attack: stopped at 3/1000 steps after 45.0 s",
        "advseg: error: --eps must be >= 0.",
    ]


def test_stage_counter_adds_up_parts():
    stream = io.StringIO()
    reporter = LogReporter(stream, Clock())
    counter = StageCounter(reporter, "metrics", 16)
    first = counter.part()
    for organ in range(1, 14):
        first(organ, 13)
    second = counter.part()
    second(1, 6)  # a region part that stops early
    counter.finish()
    assert stream.getvalue().splitlines()[0] == "advseg: metrics: started (16 metrics)"
    assert stream.getvalue().splitlines()[-1].startswith("advseg: metrics: done, 16 metrics in")


def test_bars_count_in_units_without_absurd_rates():
    stream = TerminalText()
    reporter = TqdmReporter(stream)
    reporter.progress("load", 0, 1)
    reporter.progress("load", 1, 1)
    for done in (0, 4, 8):
        reporter.progress("segment-clean", done, 8)
    for step in (0, 1, 2):
        reporter.progress("attack", step, 20, loss=0.5)
    reporter.done("out")
    text = stream.getvalue()
    assert "1/1 file" in text and "8/8 window" in text and "2/20 step" in text and "loss 0.5" in text
    assert "it/s" not in text and "file/s" not in text  # no rate for a one-file stage, no anonymous "it"


def test_auto_mode_picks_bars_on_a_terminal_and_log_lines_elsewhere():
    assert isinstance(make_reporter("auto", TerminalText()), TqdmReporter)
    assert isinstance(make_reporter("auto", io.StringIO()), LogReporter)
    assert isinstance(make_reporter("log", TerminalText()), LogReporter)


# -- the real command, on a pipe and on a terminal -------------------------------------------------------------


@pytest.fixture(scope="module")
def attack_command(tmp_path_factory, real_ct_small, real_ct_small_labels) -> list[str]:
    model = save_tiny_model(tmp_path_factory.mktemp("model"), spacing_mm=3.0, roi=32)
    arguments = ["--image", str(real_ct_small), "--label", str(real_ct_small_labels), "--model", str(model)]
    arguments += [
        "--attack",
        "pgd",
        "--steps",
        "2",
        "--organ",
        "liver",
        "--region",
        "organ",
        "--device",
        "cpu",
        "--no-preview",
    ]
    return [sys.executable, "-m", "AdvSegAttackLib.cli", "attack", *arguments]


def test_a_pipe_gets_one_line_messages_per_stage(attack_command, tmp_path):
    result = subprocess.run(
        [*attack_command, "--out", str(tmp_path / "case")],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and all(line.startswith("advseg: ") for line in lines)
    for stage, unit in (
        ("load", "file"),
        ("segment-clean", "window"),
        ("attack", "step"),
        ("write", "file"),
        ("segment-adv", "window"),
        ("metrics", "metric"),
    ):
        assert any(re.fullmatch(rf"advseg: {stage}: started \(\d+ {unit}s?\)", line) for line in lines), stage
        assert any(re.match(rf"advseg: {stage}: done, \d+ {unit}s? in \d+\.\d s", line) for line in lines), (
            stage
        )
    assert len(lines) < 40  # per stage, not per step or window
    assert "case folder:" in result.stdout


def test_a_terminal_gets_bars_with_units(attack_command, tmp_path):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
    process = subprocess.Popen(
        [*attack_command, "--out", str(tmp_path / "case")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 600)
        if not ready:
            process.kill()
            pytest.fail("no output from the attack for 600 s")
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=60) == 0
    text = b"".join(chunks).decode("utf-8", "replace")
    assert "\r" in text  # bars redraw in place
    for shown in ("/2 step", "window", "metric", "file"):
        assert shown in text, shown
    assert "it/s" not in text and "advseg: attack: started" not in text


def test_progress_log_choice_reaches_the_command(attack_command, tmp_path, capsys):
    from AdvSegAttackLib.cli import main

    arguments = attack_command[3:] + ["--out", str(tmp_path / "case"), "--progress", "log"]
    assert main(arguments) == 0
    assert "advseg: attack: done, 2 steps" in capsys.readouterr().err
