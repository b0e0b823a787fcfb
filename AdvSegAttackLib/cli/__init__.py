"""`advseg`: the command line of the engine (also `python -m AdvSegAttackLib.cli`, as Slicer starts it).

One module per command group (`volumes`: info, phantom; `models`: segment, train, train-texture-ae;
`attacks`: attacks, attack, demo; `datasets`: attack-dataset, evaluate; `studies`: session, export;
`robustness`: sweep, transfer, report), the
options several commands share in `common`. A command's parser is registered only when that command runs
(the others are listed by name), and parsing never imports torch: `--help`, `--version`, `attacks`, `info`,
`session` and `export` run without it.

Bad input prints one sentence and exits with status 2, leaving no partial output. Every command with `--out`
first claims its output folder (`volumes.outputs.claim_output_folder`: no input overwritten, writable,
locked). An unexpected error ends with one sentence naming a log file with the traceback and exit status 1
(`--debug` also prints the traceback); Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import traceback

from .. import __version__
from ..errors import InputError, unexpected_error_sentence, write_error_log
from ..progress import make_reporter
from ..watchdog import start_parent_watchdog

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("volumes", "describe a volume, label map or model card"),
    "attacks": ("attacks", "list the attacks with their parameters, ranges and presets"),
    "phantom": ("volumes", "write a synthetic abdominal CT phantom with BTCV labels"),
    "segment": ("models", "segment a CT volume with a model card"),
    "train": ("models", "train a segmentation model card (DiceCE, random crops)"),
    "attack": ("attacks", "attack a CT volume and write a case folder"),
    "session": ("studies", "blinded real-or-manipulated reader sessions"),
    "demo": ("attacks", "attack a phantom (or --image) with SAA and the bundled model"),
    "train-texture-ae": ("models", "train the CT encoder/decoder pairs of the texture attack (levels 1-5)"),
    "attack-dataset": (
        "datasets",
        "attack every case of a dataset split (also under torchrun, several processes)",
    ),
    "evaluate": ("datasets", "segment saved adversarial volumes and tabulate Dice/HD95/SSIM/PSNR"),
    "export": ("studies", "write a case bundle (NIfTI/NRRD, DICOM series) others can open"),
    "sweep": ("robustness", "one attack at several values of a parameter: Dice vs budget, CSV, plot, report"),
    "transfer": (
        "robustness",
        "adversarial volumes of source models scored on target models (white/black box)",
    ),
    "report": ("robustness", "write report.html of a sweep, transfer or dataset-run folder"),
}
"""Sub-command -> (module of this package that registers its options, one-line help)."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `advseg` parser. Every sub-command gets its full options when `command` is None; otherwise only
    `command` does, if it is one (its module is imported), and the others are listed by name and help only."""
    parser = argparse.ArgumentParser(prog="advseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"advseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            importlib.import_module(f".{module}", __name__).PARSERS[name](p)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in arguments if not a.startswith("-")), "")  # "": --help, --version or nothing
    args = build_parser(command).parse_args(arguments)
    args.command_line = "advseg " + shlex.join(arguments)
    reporter = make_reporter(args.progress)
    try:
        start_parent_watchdog()  # when Slicer started us: stop if it (or the launcher between us) goes away
        result = args.func(args, reporter)
    except InputError as error:
        reporter.error(str(error))
        return 2
    except KeyboardInterrupt:
        reporter.error("cancelled.")
        return 130
    except Exception as error:  # a bug or an environment failure: one sentence, the traceback in a log
        log = write_error_log(error, args.command_line)
        if args.debug:
            traceback.print_exception(error, file=sys.stderr)
        reporter.error(unexpected_error_sentence(error, log))
        return 1
    out = getattr(args, "out", None)
    # under torchrun (which sets RANK) only rank 0 announces the shared output folder
    if isinstance(result, dict) and out and os.environ.get("RANK", "0") == "0":
        reporter.done(str(out))
    # 1 when a dataset run finished with failed cases
    return int(result.get("exit_status", 0)) if isinstance(result, dict) else 0
