"""Progress reporting: tqdm bars for people, JSON lines (`--progress jsonl`) for the Slicer module.

JSON-lines protocol, one object per line on stdout:
`{"event": "progress", "stage": "attack", "step": 3, "total": 20, "loss": 0.71}`, then
`{"event": "done", "out": "..."}` or `{"event": "error", "message": "..."}`. Logs go to stderr.
"""

from __future__ import annotations

import json
import math
import sys
from typing import TextIO


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


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
    """A tqdm bar per stage on stderr when it is a terminal; the final lines are printed by the command itself."""

    def __init__(self) -> None:
        self._bar = None
        self._stage = None

    def progress(self, stage: str, step: int, total: int, **values: float) -> None:
        from tqdm import tqdm

        if stage != self._stage or self._bar is None:
            self.close()
            self._bar = tqdm(
                total=total, desc=stage, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None
            )
            self._stage = stage
        self._bar.total = total
        self._bar.n = step
        if values:
            self._bar.set_postfix(
                {k: f"{v:.4g}" for k, v in values.items() if isinstance(v, (int, float))}, refresh=False
            )
        self._bar.refresh()

    def done(self, out: str) -> None:
        self.close()

    def error(self, message: str) -> None:
        self.close()
        print(f"advseg: error: {message}", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._stage = None
