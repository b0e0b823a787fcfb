"""What several `advseg` commands share: options (progress, device, model, attack), the device, tables.

Nothing here imports torch at import time: parsing never does (attack flags come from the torch-free
catalogue); `resolve_device` imports it when a command that needs a device runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import InputError
from ..models.cards import model_inputs
from ..volumes.outputs import Input

DEMO_MODEL = "abdomen-unet"
REGIONS = ("whole", "organ", "bbox")
TRUST_TORCHSCRIPT_HELP = (
    "accept a TorchScript --model: TorchScript is a program that runs with your rights as soon as it is "
    "loaded, so give this only for a file from an author you trust (default: refused)"
)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_common_options(p: argparse.ArgumentParser, device: bool = True) -> None:
    """--progress and --debug (every command), --device (commands that run a model)."""
    p.add_argument(
        "--progress",
        choices=("auto", "tqdm", "log", "jsonl"),
        default="auto",
        help="progress on stderr: tqdm bars, one-line log messages per stage, or auto (bars on a terminal, "
        "log lines otherwise); jsonl: JSON lines on stdout (the Slicer module's protocol)",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of an unexpected error (it is always logged)",
    )
    if device:
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")


def add_trust_torchscript_option(p: argparse.ArgumentParser) -> None:
    """--trust-torchscript, on every command that loads a model."""
    p.add_argument("--trust-torchscript", action="store_true", help=TRUST_TORCHSCRIPT_HELP)


def add_model_options(p: argparse.ArgumentParser, card: bool = True) -> None:
    """--model (default: the bundled model), --card (describes a checkpoint), --trust-torchscript and the
    choices of an nnU-Net results folder (--configuration, --folds, --checkpoint, --tta)."""
    p.add_argument(
        "--model",
        default=DEMO_MODEL,
        help="model card, bundled name, checkpoint, MONAI bundle or nnU-Net v2 results folder",
    )
    if card:
        p.add_argument("--card", help="card or preset describing a checkpoint/TorchScript --model")
    add_trust_torchscript_option(p)
    add_nnunet_options(p, "nnU-Net v2 results folders (--model FOLDER, e.g. a TotalSegmentator model)")


def add_nnunet_options(p: argparse.ArgumentParser, title: str) -> None:
    """--configuration, --folds, --checkpoint, --tta: the choices of an nnU-Net results folder."""
    group = p.add_argument_group(title)
    group.add_argument(
        "--configuration", help="the configuration, where the folder holds several (e.g. 3d_fullres)"
    )
    group.add_argument("--folds", nargs="+", help="folds to average (default: every fold_<k> present)")
    group.add_argument(
        "--checkpoint",
        choices=("final", "best"),
        help="checkpoint_final.pth (default) or checkpoint_best.pth",
    )
    group.add_argument(
        "--tta",
        action="store_true",
        help="mirroring test-time augmentation, as nnU-Net predicts by default (off: 2-8x faster attacks)",
    )


def nnunet_options(args: argparse.Namespace) -> dict | None:
    """The nnU-Net choices given on the command line ({configuration, folds, checkpoint, tta}), or None."""
    given = {key: getattr(args, key, None) for key in ("configuration", "folds", "checkpoint", "tta")}
    given = {key: value for key, value in given.items() if value not in (None, False)}
    return given or None


def add_attack_options(p: argparse.ArgumentParser, every_case: bool = False, model: bool = True) -> None:
    """The model, the attack and its settings of `attack` and `attack-dataset` (`every_case`: the settings
    apply to every case of a dataset): --attack, --preset, one flag per catalogue parameter, --organ,
    --region, --dilation-mm, --targeted, --seed, --sw-batch-size, --no-preview. Without `model` (a command
    with models of its own, `transfer`) no --model or --card, only --trust-torchscript and the nnU-Net choices."""
    from ..attacks.catalogue import ATTACKS

    if model:
        add_model_options(p)
    else:
        add_trust_torchscript_option(p)
        add_nnunet_options(p, "nnU-Net v2 results folders (the same choices for each one among the models)")
        p.set_defaults(model="", card=None)
    p.add_argument(
        "--attack", required=True, choices=list(ATTACKS), help="attack name (see `advseg attacks`)"
    )
    p.add_argument("--preset", help=_preset_help())
    cases = ", every case" if every_case else ""
    p.add_argument(
        "--organ",
        nargs="+",
        default=[],
        help=f"organ names (e.g. liver spleen): loss focus and region{cases}",
    )
    p.add_argument("--region", default="whole", choices=REGIONS, help="where voxels may change")
    p.add_argument("--dilation-mm", type=float, default=10.0, help="organ region dilation, mm (default 10)")
    p.add_argument("--targeted", action="store_true", help="drive the --organ to background (organ removal)")
    p.add_argument(
        "--seed", type=int, default=0, help="attack seed" + (" (the same for every case)" * every_case)
    )
    p.add_argument("--sw-batch-size", type=positive_int, default=4, help="windows per forward/backward pass")
    p.add_argument("--no-preview", action="store_true", help="do not write preview.png")
    _add_attack_parameters(p)


def _preset_help() -> str:
    """--preset help: the presets of every attack that has some, the default marked."""
    from ..attacks.catalogue import ATTACKS

    listed: dict[str, list[str]] = {}
    for entry in ATTACKS.values():
        names = [f"{n} [default]" if n == entry.default_preset else n for n in entry.preset_names()]
        if names:
            listed.setdefault(", ".join(names), []).append(entry.name)
    presets = "; ".join(f"{'/'.join(attacks)}: {names}" for names, attacks in listed.items())
    return f"named parameter set ({presets}); a flag given as well overrides its value"


def _add_attack_parameters(p: argparse.ArgumentParser) -> None:
    """One flag per catalogue parameter (each applies to the attacks that have it). Values are validated by
    the catalogue, not by argparse, so a bad one is one sentence (exit 2), also with --progress jsonl."""
    from ..attacks.catalogue import parameter_flags

    kinds = {"float": float, "int": int}
    group = p.add_argument_group("attack parameters (each applies to the attacks that have it)")
    for name, parameter in parameter_flags().items():
        bounds = parameter.range_text() or (", ".join(parameter.choices) if parameter.choices else "")
        help_text = f"{parameter.doc} [{parameter.unit}{'; ' + bounds if bounds else ''}]".replace("%", "%%")
        if parameter.type == "bool":
            action = argparse.BooleanOptionalAction
            group.add_argument(parameter.flag, dest=name, action=action, default=None, help=help_text)
        else:
            kind = kinds.get(parameter.type, str)
            group.add_argument(parameter.flag, dest=name, type=kind, default=None, help=help_text)


def attack_request(args: argparse.Namespace, image: Path, label: Path | None, out: Path, device):
    """The `pipeline.AttackRequest` of `add_attack_options`' options for one volume (a dataset run replaces
    image, label and out per case)."""
    from ..attacks.catalogue import parameter_flags
    from ..pipeline.request import AttackRequest

    return AttackRequest(
        image=image,
        model=args.model,
        out=out,
        attack=args.attack,
        params={name: getattr(args, name) for name in parameter_flags()},
        preset=args.preset,
        label=label,
        card=args.card,
        organs=args.organ,
        region=args.region,
        dilation_mm=args.dilation_mm,
        targeted=args.targeted,
        seed=args.seed,
        device=device,
        sw_batch_size=args.sw_batch_size,
        preview=not args.no_preview,
        command_line=args.command_line,
        trust_torchscript=args.trust_torchscript,
        nnunet=nnunet_options(args),
    )


def volume_and_model_inputs(args: argparse.Namespace) -> list[Input]:
    """(path, what) of the files `segment`, `attack` and `demo` read: --image, --label, the model, --card."""
    volumes = [(path, option) for path, option in ((args.image, "--image"), (args.label, "--label")) if path]
    return [*volumes, *model_inputs(args.model), *model_inputs(getattr(args, "card", None), "--card")]


def resolve_device(name: str):
    """`auto` (cuda if available, else cpu), `cpu`, `cuda` or `cuda:N` as a torch.device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device


def print_table(rows: list[list[str]], header: list[str], out=None) -> None:
    """Columns padded to their widest cell, a dashed line under the header."""
    out = out or sys.stdout  # looked up now, not at import (tests and Slicer replace sys.stdout)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)), file=out)


def number_text(value: float | None, digits: int = 3) -> str:
    """A number with `digits` decimals; "-" for None (JSON null: undefined, e.g. an organ not in the reference)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def mean_text(metrics: dict, key: str, digits: int = 3) -> str:
    """`0.874 (13 organs)`: a mean of metrics.json with the number of organs it covers."""
    count = metrics.get(f"{key}_organs", 0)
    return f"{number_text(metrics.get(key), digits)} ({count} organ{'s' if count != 1 else ''})"
