"""Start-up time of `advseg` commands that need no model, and whether they import torch or MONAI.

Each command runs in a fresh Python (`advseg ARGS` through `AdvSegAttackLib.cli.main`, as the console script
and `python -m AdvSegAttackLib.cli` do), `--repeats` times; the table gives the median wall time, the exit
status and the heavy packages the process had imported at the end. `info` reads a small volume, a label map
and the bundled model card that the script writes or finds; `session verify` and `export` are timed on a
missing folder (exit status 2: the work itself is not what is measured).

    .venv/bin/python benchmarks/cli_startup.py [--engine-root DIR] [--repeats 3]

`--engine-root` runs another checkout of the engine (its `AdvSegAttackLib` goes first on PYTHONPATH), e.g. the
tree of an older commit: `git archive COMMIT | tar -x -C /tmp/old`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
PROBE = """
import sys
argv = sys.argv[1:]
from AdvSegAttackLib.cli import main
try:
    status = main(argv)
except SystemExit as stop:
    status = stop.code
heavy = sorted({"torch", "monai"} & set(sys.modules))
print("heavy:" + ",".join(heavy), file=sys.stderr)
print("engine:" + sys.modules["AdvSegAttackLib"].__file__, file=sys.stderr)
sys.exit(status or 0)
"""


def write_inputs(folder: Path) -> dict[str, Path]:
    """A 64x64x48 CT-like volume (int16 HU) and a BTCV label map on its grid, written with SimpleITK."""
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 30, (48, 64, 64)).astype(np.int16)
    labels = np.zeros(hu.shape, np.uint8)
    labels[10:30, 20:40, 20:40] = 6
    labels[30:40, 10:20, 40:50] = 1
    paths = {}
    for name, array in (("volume", hu), ("label", labels)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.5, 1.5, 3.0))
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    return paths


def time_command(arguments: list[str], engine_root: Path, repeats: int, cwd: Path) -> tuple[float, int, str]:
    """(median seconds, exit status, heavy packages imported) of `advseg ARGUMENTS` in a fresh Python started
    in `cwd` (not the repository, whose engine `python -c` would import first)."""
    environment = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(engine_root), os.environ.get("PYTHONPATH", "")])
    )
    environment.pop("ADVSEG_PARENT_PID", None)
    seconds, status, heavy = [], 0, ""
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", PROBE, *arguments],
            capture_output=True,
            text=True,
            env=environment,
            cwd=cwd,
        )
        seconds.append(time.perf_counter() - start)
        status = result.returncode
        lines = [line for line in result.stderr.splitlines() if line.startswith("heavy:")]
        heavy = lines[-1].removeprefix("heavy:") if lines else "?"
        engine = Path(result.stderr.rsplit("engine:", 1)[-1].strip())
        if not engine.is_relative_to(engine_root.resolve()):
            raise SystemExit(f"the probe imported the engine from {engine}, not from {engine_root}")
    return statistics.median(seconds), status, heavy or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-root", type=Path, default=REPO, help="folder holding AdvSegAttackLib")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    card = args.engine_root / "Resources" / "Models" / "abdomen-unet" / "card.json"
    with tempfile.TemporaryDirectory() as folder:
        inputs = write_inputs(Path(folder))
        missing = str(Path(folder) / "missing")
        commands = [
            ["--version"],
            ["--help"],
            ["attack", "--help"],
            ["attacks", "--json"],
            ["info", str(card)],
            ["info", str(inputs["volume"])],
            ["info", str(inputs["label"])],
            ["session", "verify", missing],
            ["export", missing, "--out", str(Path(folder) / "bundle")],
        ]
        print(f"engine: {args.engine_root}; median of {args.repeats} runs, each in a fresh Python\n")
        print("| command | seconds | exit status | torch/MONAI imported |")
        print("|---|---|---|---|")
        for arguments in commands:
            seconds, status, heavy = time_command(arguments, args.engine_root, args.repeats, Path(folder))
            shown = " ".join(Path(a).name if os.sep in a else a for a in arguments)
            print(f"| `advseg {shown}` | {seconds:.2f} | {status} | {heavy} |")


if __name__ == "__main__":
    main()
