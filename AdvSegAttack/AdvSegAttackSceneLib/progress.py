"""The JSON-lines progress protocol of `AdvSegAttackLib.cli attack ... --progress jsonl`.

The engine prints one JSON object per line on stdout::

    {"event": "progress", "stage": "attack", "step": 3, "total": 20, "loss": 0.71}
    {"event": "done", "out": "/path/to/case"}
    {"event": "error", "message": "One sentence that names the file and what is wrong."}

This module is plain Python (no Qt, no MRML), so the Slicer module and the tests share it. Output arrives
from `qt.QProcess` in arbitrary chunks: `LineSplitter` keeps the bytes of an unfinished line and decodes
UTF-8 only at line ends (so a line split mid-character is never garbled), and `ProgressLineBuffer` parses
the lines it completes. Anything that is not a protocol object becomes a ``"log"`` event, never an exception.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

# Stages in the order the engine runs them, with their share of the whole run (sums to 1).
STAGES: tuple[tuple[str, float], ...] = (
    ("load", 0.03),
    ("segment-clean", 0.12),
    ("attack", 0.60),
    ("write", 0.03),
    ("segment-adv", 0.12),
    ("metrics", 0.10),
)

STAGE_LABELS: dict[str, str] = {
    "load": "Loading",
    "segment-clean": "Segmenting the clean volume",
    "attack": "Attacking",
    "write": "Writing the adversarial volume",
    "segment-adv": "Segmenting the attacked volume",
    "metrics": "Computing metrics",
}

PROGRESS = "progress"
DONE = "done"
ERROR = "error"
LOG = "log"

_FALLBACK_ERROR = "The attack failed without an error message; see the log for details."


@dataclass(frozen=True)
class ProgressEvent:
    """One parsed line of engine output.

    ``kind`` is ``"progress"``, ``"done"``, ``"error"`` or ``"log"`` (a line that is not a protocol object;
    its text is in ``message``).
    """

    kind: str
    stage: str = ""
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    message: str = ""
    out: str = ""

    @property
    def stageFraction(self) -> float | None:
        """Fraction of the current stage that is done (0..1), or None if the line gives no step/total."""
        if self.kind != PROGRESS or self.step is None or not self.total:
            return None
        return min(max(self.step / self.total, 0.0), 1.0)

    @property
    def fraction(self) -> float | None:
        """Fraction of the whole run that is done (0..1), or None when it cannot be told from this line."""
        if self.kind == DONE:
            return 1.0
        if self.kind != PROGRESS:
            return None
        before = 0.0
        for name, weight in STAGES:
            if name == self.stage:
                within = self.stageFraction
                return min(before + weight * (within if within is not None else 0.0), 1.0)
            before += weight
        return None

    def describe(self) -> str:
        """Short human-readable text for a progress bar or status line."""
        if self.kind == DONE:
            return "Done"
        if self.kind == ERROR:
            return self.message
        if self.kind == LOG:
            return self.message
        label = STAGE_LABELS.get(self.stage, self.stage.replace("-", " ").capitalize() or "Working")
        parts = []
        if self.step is not None and self.total:
            parts.append(f"step {self.step}/{self.total}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3g}")
        return f"{label}: {', '.join(parts)}" if parts else label


def _intOrNone(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _floatOrNone(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def parseProgressLine(line: str | bytes) -> ProgressEvent | None:
    """Parse one line of engine stdout.

    :param line: the line, with or without its newline.
    :return: the event; None for a blank line. Lines that are not protocol objects (garbage, stray prints,
      JSON of another shape) come back as ``"log"`` events holding the text.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    text = line.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return ProgressEvent(LOG, message=text)
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        return ProgressEvent(LOG, message=text)
    event = obj["event"]
    if event == PROGRESS:
        stage = obj.get("stage")
        return ProgressEvent(
            PROGRESS,
            stage=stage if isinstance(stage, str) else "",
            step=_intOrNone(obj.get("step")),
            total=_intOrNone(obj.get("total")),
            loss=_floatOrNone(obj.get("loss")),
        )
    if event == DONE:
        out = obj.get("out")
        return ProgressEvent(DONE, out=out if isinstance(out, str) else "")
    if event == ERROR:
        message = obj.get("message")
        if not isinstance(message, str) or not message.strip():
            message = _FALLBACK_ERROR
        return ProgressEvent(ERROR, message=message.strip())
    return ProgressEvent(LOG, message=text)


class LineSplitter:
    """Turns arbitrary chunks of process output (bytes) into complete text lines.

    Bytes are kept until a newline arrives and each line is decoded as UTF-8 as a whole, so a chunk that
    ends in the middle of a line or of a multi-byte character loses nothing. ``\r\n`` ends a line too.
    """

    def __init__(self):
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        """Add a chunk; return the lines it completed (without their line ends)."""
        *lines, self._pending = (self._pending + bytes(data)).split(b"\n")
        return [self._decode(line) for line in lines]

    def flush(self) -> list[str]:
        """The last line if it had no newline (empty list if nothing is left); resets the splitter."""
        rest, self._pending = self._pending, b""
        return [self._decode(rest)] if rest else []

    @staticmethod
    def _decode(line: bytes) -> str:
        return line.removesuffix(b"\r").decode("utf-8", errors="replace")


class ProgressLineBuffer:
    """Turns arbitrary chunks of process output into complete lines and parses them.

    Example::

        buffer = ProgressLineBuffer()
        for event in buffer.feed(process.readAllStandardOutput().data()):
            ...
        for event in buffer.flush():  # when the process has finished
            ...
    """

    def __init__(self):
        self._lines = LineSplitter()

    def feed(self, data: bytes) -> list[ProgressEvent]:
        """Add a chunk of output; return the events of the lines it completed."""
        return self._parse(self._lines.feed(data))

    def flush(self) -> list[ProgressEvent]:
        """Parse whatever is left (a last line without a newline) and reset."""
        return self._parse(self._lines.flush())

    @staticmethod
    def _parse(lines: list[str]) -> list[ProgressEvent]:
        return [event for event in map(parseProgressLine, lines) if event is not None]
