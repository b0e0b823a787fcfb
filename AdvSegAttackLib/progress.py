"""Progress reporting: tqdm bars on a terminal, one-line log messages elsewhere, JSON lines for the Slicer module.

JSON-lines protocol (`--progress jsonl`), one object per line on stdout:
`{"event": "progress", "stage": "attack", "step": 3, "total": 20, "loss": 0.71}`, then
`{"event": "done", "out": "..."}` or `{"event": "error", "message": "..."}`. Logs go to stderr.

`--progress auto` (the default) shows tqdm bars when stderr is a terminal and log lines otherwise (a log file,
a pipe, a batch job): a line when a stage starts, at every further 10 % of it (at most one every
`LogReporter.min_interval_s`, and at least one every `LogReporter.heartbeat_s`), and when it ends, with its
time. Every stage counts in its own unit (`STAGE_UNITS`: steps, windows, files, metrics, cases).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import TextIO

STAGE_UNITS = {
    "load": "file",
    "write": "file",
    "export": "file",
    "segment": "window",
    "segment-clean": "window",
    "segment-adv": "window",
    "attack": "step",
    "train": "step",
    "metrics": "metric",
    "cases": "case",
}
"""What one step of a stage is (stages not listed count steps)."""


def stage_unit(stage: str) -> str:
    return STAGE_UNITS.get(stage, "step")


class Reporter:
    """Base reporter: stages with steps. Subclasses print them."""

    def progress(self, stage: str, step: int, total: int, **values: float) -> None:
        raise NotImplementedError

    def done(self, out: str) -> None:
        raise NotImplementedError

    def error(self, message: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish any open display."""


class SilentReporter(Reporter):
    """Reports nothing (ranks other than 0 of a dataset run; the Python API without a progress callback)."""

    def progress(self, stage: str, step: int, total: int, **values: float) -> None:
        pass

    def done(self, out: str) -> None:
        pass

    def error(self, message: str) -> None:
        pass


class StageCounter:
    """Progress of one stage made of parts that count on their own (e.g. HD95 per organ, then SSIM):
    `part()` gives a progress(done, total) callback for the next part, `step()` counts one unit."""

    def __init__(self, reporter: Reporter, stage: str, total: int) -> None:
        self.reporter, self.stage, self.total, self.done = reporter, stage, total, 0
        reporter.progress(stage, 0, total)

    def step(self) -> None:
        self.done += 1
        self.reporter.progress(self.stage, min(self.done, self.total), self.total)

    def finish(self) -> None:
        """The stage is complete (parts that turned out to have nothing to do are skipped)."""
        if self.done < self.total:
            self.done = self.total
            self.reporter.progress(self.stage, self.total, self.total)

    def part(self):
        base = self.done

        def callback(done: int, total: int) -> None:
            self.done = base + done
            self.reporter.progress(self.stage, min(self.done, self.total), self.total)

        return callback


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _values_text(values: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, int | float))


class JsonLinesReporter(Reporter):
    """One JSON object per line, flushed at once (a parent process reads them as they come)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def _emit(self, payload: dict) -> None:
        self.stream.write(json.dumps({k: _clean(v) for k, v in payload.items()}) + "\n")
        self.stream.flush()

    def progress(self, stage: str, step: int, total: int, **values: float) -> None:
        self._emit({"event": "progress", "stage": stage, "step": step, "total": total, **values})

    def done(self, out: str) -> None:
        self._emit({"event": "done", "out": out})

    def error(self, message: str) -> None:
        self._emit({"event": "error", "message": message})


class TqdmReporter(Reporter):
    """A tqdm bar per stage on `stream` (stderr), counted in the stage's unit; the command prints its results."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._bar = None
        self._stage = None

    def progress(self, stage: str, step: int, total: int, **values: float) -> None:
        from tqdm import tqdm

        if stage != self._stage or self._bar is None:
            self.close()
            # A rate only where steps repeat: "1/1 file, 31300 it/s" says nothing.
            rate = ", {rate_fmt}" if total > 1 else ""
            self._bar = tqdm(
                total=total,
                desc=stage,
                unit=stage_unit(stage),
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
                smoothing=0.5,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}"
                + rate
                + "{postfix}]",
            )
            self._stage = stage
        if total != self._bar.total:
            self._bar.total = total
        if values:
            self._bar.set_postfix_str(_values_text(values), refresh=False)
        if step > self._bar.n:
            self._bar.update(step - self._bar.n)  # update, not n =: tqdm's rate follows the real steps
        if self._bar.last_print_n != self._bar.n or values:  # shown even within tqdm's minimum interval
            self._bar.refresh()

    def done(self, out: str) -> None:
        self.close()

    def error(self, message: str) -> None:
        self.close()
        print(f"advseg: error: {message}", file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._stage = None


class LogReporter(Reporter):
    """Plain one-line messages on `stream` (stderr) for a non-terminal: stage start, every further 10 %
    (at most one line per `min_interval_s`, at least one per `heartbeat_s`) and end with its time."""

    min_interval_s = 2.0
    heartbeat_s = 30.0

    def __init__(self, stream: TextIO | None = None, clock=time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self._clock = clock
        self._stage: str | None = None
        self._step = self._total = 0
        self._started = self._last_line = 0.0
        self._decile = 0

    def _line(self, text: str) -> None:
        self.stream.write(f"advseg: {text}\n")
        self.stream.flush()

    def _count(self, step: int, total: int | None = None) -> str:
        unit = stage_unit(self._stage or "")
        return f"{step}/{total} {unit}s" if total is not None else f"{step} {unit}{'s' if step != 1 else ''}"

    def progress(self, stage: str, step: int, total: int, **values: float) -> None:
        now = self._clock()
        if stage != self._stage:
            self.close()
            self._stage, self._started, self._last_line, self._decile = stage, now, now, 0
            self._line(f"{stage}: started ({self._count(total)})")
        self._step, self._total = step, total
        decile = int(10 * step / total) if total else 0
        due = decile > self._decile and now - self._last_line >= self.min_interval_s
        if step < total and (due or now - self._last_line >= self.heartbeat_s):
            extra = _values_text(values)
            self._line(
                f"{stage}: {self._count(step, total)} ({100 * step / total:.0f} %), "
                f"{now - self._started:.1f} s" + (f", {extra}" if extra else "")
            )
            self._last_line, self._decile = now, decile
        if total and step >= total:
            extra = _values_text(values)
            self._finish(now, extra)

    def _finish(self, now: float, extra: str = "") -> None:
        seconds = now - self._started
        per_step = f", {seconds / self._step:.2f} s/{stage_unit(self._stage)}" if self._step > 1 else ""
        self._line(
            f"{self._stage}: done, {self._count(self._step)} in {seconds:.1f} s{per_step}"
            + (f", {extra}" if extra else "")
        )
        self._stage = None

    def done(self, out: str) -> None:
        self.close()

    def error(self, message: str) -> None:
        if not self._step:  # a stage that did nothing yet (bad input found while loading) needs no line
            self._stage = None
        self.close()
        self._line(f"error: {message}")

    def close(self) -> None:
        if self._stage is not None:
            self._line(
                f"{self._stage}: stopped at {self._count(self._step, self._total)} after "
                f"{self._clock() - self._started:.1f} s"
            )
        self._stage = None


def make_reporter(mode: str, stream: TextIO | None = None) -> Reporter:
    """The reporter of `--progress MODE`: jsonl, tqdm, log, or auto (tqdm on a terminal, log otherwise)."""
    if mode == "jsonl":
        return JsonLinesReporter()
    stream = stream or sys.stderr
    if mode == "tqdm" or (mode == "auto" and stream.isatty()):
        return TqdmReporter(stream)
    return LogReporter(stream)
