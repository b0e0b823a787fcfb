"""`advseg`: the command line of the engine (also `python -m AdvSegAttackLib.cli`, as Slicer starts it).

Bad input prints one sentence and exits with status 2, leaving no partial output. Every command with `--out`
first claims its output folder (`outputs.claim_output_folder`: no input overwritten, writable, locked). An
unexpected error ends with one sentence naming a log file with the traceback and exit status 1 (`--debug`
also prints the traceback); Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from pathlib import Path

from .. import __version__
from ..errors import InputError, unexpected_error_sentence, write_error_log
from ..models.cards import model_inputs
from ..progress import Reporter, make_reporter
from ..volumes.outputs import claim_output_folder
from ..watchdog import start_parent_watchdog

DEMO_MODEL = "abdomen-unet"

TRUST_TORCHSCRIPT_HELP = (
    "accept a TorchScript --model: TorchScript is a program that runs with your rights as soon as it is "
    "loaded, so give this only for a file from an author you trust (default: refused)"
)


def add_trust_torchscript_argument(parser) -> None:
    """`--trust-torchscript` on an argparse parser of a command that takes a model."""
    parser.add_argument("--trust-torchscript", action="store_true", help=TRUST_TORCHSCRIPT_HELP)


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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _print_table(rows: list[list[str]], header: list[str], out=None) -> None:
    out = out or sys.stdout  # looked up now, not at import (tests and Slicer replace sys.stdout)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)), file=out)


def _fmt(value: float | None, digits: int = 3) -> str:
    """A number with `digits` decimals; "-" for None (JSON null: undefined, e.g. an organ not in the reference)."""
    import math

    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _mean_text(metrics: dict, key: str, digits: int = 3) -> str:
    """`0.874 (13 organs)`: a mean of metrics.json with the number of organs it covers."""
    count = metrics.get(f"{key}_organs", 0)
    return f"{_fmt(metrics.get(key), digits)} ({count} organ{'s' if count != 1 else ''})"


# --- info -------------------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace, reporter: Reporter) -> dict:
    """What a volume, label map or model card is."""
    from ..volumes.io import describe_image, full_suffix, json_safe, read_image, read_label

    path = Path(args.file)
    if (
        path.suffix.lower() == ".json"
        or (path.is_dir() and (path / "card.json").is_file())
        or not path.exists()
    ):
        from ..models.cards import load_card

        card = load_card(args.file)
        info = {"kind": "model card", **json.loads(card.to_json())}
    elif full_suffix(path) == ".seg.nrrd":
        info = _label_info(read_label(path), describe_image)
    else:
        image = read_image(path)
        if image.GetPixelID() in _label_types() and _looks_like_labels(image):
            info = _label_info(read_label(path), describe_image)
        else:
            info = {"kind": "image", **describe_image(image)}
    print(json.dumps(json_safe(info), indent=2, allow_nan=False))
    return info


def _looks_like_labels(image) -> bool:
    import numpy as np
    import SimpleITK as sitk

    voxels = sitk.GetArrayViewFromImage(image)
    return voxels.min() >= 0 and len(np.unique(voxels[:: max(1, voxels.shape[0] // 16)])) <= 64


def _label_info(label, describe) -> dict:
    import numpy as np
    import SimpleITK as sitk

    from ..models.labels import BTCV_LABEL_NAMES

    values, counts = np.unique(sitk.GetArrayViewFromImage(label), return_counts=True)
    present = {
        int(v): {"name": BTCV_LABEL_NAMES[v] if v < len(BTCV_LABEL_NAMES) else f"label {v}", "voxels": int(c)}
        for v, c in zip(values, counts, strict=True)
        if v
    }
    return {"kind": "label map (BTCV names)", **describe(label), "labels": present}


def _label_types():
    import SimpleITK as sitk

    return {sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkInt8, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32}


# --- attacks ----------------------------------------------------------------------------------------------


def cmd_attacks(args: argparse.Namespace, reporter: Reporter) -> dict:
    """The attack catalogue: a table per attack for people, or the catalogue as JSON (`--json`)."""
    from ..attacks.catalogue import ATTACKS, catalogue

    listing = catalogue()
    if args.json:
        print(json.dumps(listing, indent=2, ensure_ascii=False, allow_nan=False))
        return listing
    for entry in ATTACKS.values():
        needs = "exactly one --organ, no --region or --targeted" if entry.needs_organ else "--organ optional"
        presets = [f"{name}{' (default)' * (name == entry.default_preset)}" for name in entry.preset_names()]
        print(f"\n{entry.name}: {entry.label}\n{entry.description}")
        print(needs + (f"; --preset {', '.join(presets)}" if presets else ""))
        defaults = entry.defaults()
        rows = [[p.flag, _value_text(defaults[p.name]), _values_text(p), p.unit] for p in entry.parameters]
        _print_table(rows, ["flag", "default", "values", "unit"])
    return listing


def _values_text(parameter) -> str:
    """What a catalogue parameter accepts: its choices, on | off, its range, or "any"."""
    if parameter.type == "bool":
        return "on | off"
    return " | ".join(parameter.choices or ()) or parameter.range_text() or "any"


def _value_text(value) -> str:
    """A catalogue value as on the command line: on/off for booleans, "-" for none."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "-" if value is None else str(value)


# --- phantom ----------------------------------------------------------------------------------------------


def cmd_phantom(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Write a synthetic abdominal CT phantom and its BTCV label map."""
    from ..volumes.phantom import write_phantom

    with claim_output_folder(args.out, writes=[f"phantom_seed{args.seed}_*"]):
        image, label = write_phantom(
            args.seed,
            Path(args.out),
            shape=tuple(args.shape),
            spacing=tuple(args.spacing),
            contrast=args.contrast,
        )
    print(f"wrote {image}\nwrote {label}")
    return {"image": str(image), "label": str(label)}


# --- segment ----------------------------------------------------------------------------------------------


SEGMENT_FILES = ("pred.nii.gz", "pred.seg.nrrd", "metrics.json")


def segmentation_rows(metrics: dict) -> list[list[str]]:
    """Rows organ, label, Dice, HD95 of a `segment` metrics.json ("-" where the reference lacks the organ)."""
    return [
        [name, str(o["label"]), _fmt(o.get("dice_clean")), _fmt(o.get("hd95_clean_mm"), 1)]
        for name, o in metrics["organs"].items()
    ]


def run_segment(
    image_path: Path,
    model: str,
    out_dir: Path,
    label_path: Path | None,
    device,
    reporter: Reporter,
    card: str | None = None,
    sw_batch_size: int = 4,
    trust_torchscript: bool = False,
) -> dict:
    """Segment a volume, write `pred.nii.gz` and `pred.seg.nrrd`, and score it against a reference if given."""
    import SimpleITK as sitk

    from ..evaluation.metrics import metrics_document, organ_metrics
    from ..models.networks import load_model
    from ..models.segment import segment_image
    from ..volumes.io import (
        read_image,
        read_label,
        sha256_file,
        staged_output_dir,
        write_image,
        write_json_atomic,
        write_segmentation,
    )

    image = read_image(image_path)
    model_card, network = load_model(model, card=card, device=device, trust_torchscript=trust_torchscript)
    reference = read_label(label_path, image, model_card.label_names) if label_path else None
    with staged_output_dir(out_dir) as staging:
        predicted, _, _ = segment_image(
            image,
            model_card,
            network,
            device,
            sw_batch_size,
            progress=lambda done, total: reporter.progress("segment", done, total),
        )
        write_image(predicted, staging / "pred.nii.gz")
        write_segmentation(
            predicted, staging / "pred.seg.nrrd", model_card.label_names, model_card.label_colors
        )
        organs = organ_metrics(
            model_card.label_names,
            tuple(reversed(image.GetSpacing())),  # SimpleITK arrays are (z, y, x)
            sitk.GetArrayFromImage(predicted),
            sitk.GetArrayFromImage(reference) if reference is not None else None,
        )
        result = metrics_document(
            "segment",
            model_card.name,
            image.GetSize(),
            image.GetSpacing(),
            "reference label" if reference is not None else None,
            organs,
            input={"path": str(image_path), "sha256": sha256_file(image_path)},
            reference_label=(
                {"path": str(label_path), "sha256": sha256_file(label_path)}
                if reference is not None
                else None
            ),
        )
        write_json_atomic(staging / "metrics.json", result)
    reporter.close()
    return result


def cmd_segment(args: argparse.Namespace, reporter: Reporter) -> dict:
    device = resolve_device(args.device)
    with claim_output_folder(args.out, volume_and_model_inputs(args), SEGMENT_FILES):
        result = run_segment(
            Path(args.image),
            args.model,
            Path(args.out),
            Path(args.label) if args.label else None,
            device,
            reporter,
            card=args.card,
            sw_batch_size=args.sw_batch_size,
            trust_torchscript=args.trust_torchscript,
        )
    if result["reference"] and args.progress != "jsonl":
        _print_table(segmentation_rows(result), ["organ", "label", "Dice", "HD95 mm"])
        print(
            f"mean organ Dice (background excluded) {_mean_text(result, 'mean_dice_clean')}, "
            f"mean HD95 {_mean_text(result, 'mean_hd95_clean_mm', 1)} mm; '-': not in the reference"
        )
    print(f"wrote {Path(args.out) / 'pred.nii.gz'} and pred.seg.nrrd", file=sys.stderr)
    return result


# --- train ------------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Train a model card from labelled volumes and/or phantoms (adversarially; under torchrun with DDP)."""
    from ..datasets.distributed import init_distributed, shutdown
    from ..models.cards import CARD_FILE, WEIGHTS_FILE
    from ..training.adversarial import from_args
    from ..training.supervised import STATE_FILE

    if len(args.image) != len(args.label):
        raise InputError(
            f"give one --label per --image ({len(args.image)} images, {len(args.label)} labels)."
        )
    if len(args.val_image) != len(args.val_label):
        raise InputError("give one --val-label per --val-image.")
    adversarial = from_args(args)
    distributed, device = init_distributed(resolve_device(args.device))
    volumes = {"--image": args.image, "--label": args.label, "--val-image": args.val_image}
    volumes["--val-label"] = args.val_label
    inputs = [(path, option) for option, paths in volumes.items() for path in paths]
    inputs += model_inputs(args.init, "--init")
    try:
        with claim_output_folder(args.out, inputs, (CARD_FILE, WEIGHTS_FILE, STATE_FILE), ctx=distributed):
            return _train(args, reporter, adversarial, distributed, device)
    finally:
        shutdown(distributed)


def _train(args: argparse.Namespace, reporter: Reporter, adversarial, distributed, device) -> dict:
    from ..models.cards import ModelCard, load_card, weights_path
    from ..models.networks import load_model
    from ..training.supervised import TrainConfig, TrainingCase, train
    from ..volumes.io import read_image, read_label, sha256_file

    config = TrainConfig(
        steps=args.steps,
        crops_per_volume=args.crops_per_volume,
        volumes_per_step=args.volumes_per_step,
        learning_rate=args.learning_rate,
        validate_every=args.validate_every,
        seed=args.seed,
    )
    initial = None
    if args.init:
        card, initial = load_model(args.init, device=device, trust_torchscript=args.trust_torchscript)
        weights = weights_path(card)
        card.provenance = {  # the previous provenance describes the initial weights, not the new ones
            "initialised_from": {
                "model": args.init,
                "name": card.name,
                "weights_sha256": sha256_file(weights) if weights else None,
                "provenance": card.provenance,
            }
        }
        card.name = args.name or card.name
    else:
        base = load_card(args.preset) if args.preset else None
        card = ModelCard(
            name=args.name or "model",
            architecture=args.architecture if not base else base.architecture,
            arguments=_architecture_arguments(args) if not base else base.arguments,
            spacing_mm=list(args.spacing),
            intensity_window_hu=list(args.window),
            roi_size=list(args.roi),
            overlap=args.overlap,
        )

    def cases(images, labels, phantom_seeds) -> list[TrainingCase]:
        out = []
        for image_path, label_path in zip(images, labels, strict=True):
            image = read_image(image_path)
            label = read_label(label_path, image, card.label_names)
            name = (
                f"{Path(image_path).name} (sha256 {sha256_file(image_path)[:12]}) + {Path(label_path).name}"
            )
            out.append(TrainingCase(name, image, label))
        for seed in phantom_seeds:
            from ..volumes.phantom import make_phantom

            contrast = "native" if seed % 2 else "portal-venous"
            image, label = make_phantom(seed, contrast=contrast, spacing=tuple(args.phantom_spacing))
            out.append(TrainingCase(f"phantom seed {seed} ({contrast})", image, label, synthetic=True))
        return out

    training = cases(args.image, args.label, range(args.phantoms))
    validation = cases(args.val_image, args.val_label, args.val_phantom_seed)
    command = args.command_line
    card_path = train(
        card,
        training,
        validation,
        Path(args.out),
        config,
        device,
        initial=initial,
        resume=not args.restart,
        progress=lambda s, t, loss, dice: reporter.progress(
            "train", s, t, loss=loss, **({"validation_dice": dice} if dice is not None else {})
        ),
        command_line=command,
        adversarial=adversarial,
        distributed=distributed,
    )
    reporter.close()
    if distributed.is_main:
        print(f"wrote {card_path}", file=sys.stderr)
    return {"card": str(card_path)}


def _architecture_arguments(args: argparse.Namespace) -> dict:
    if args.architecture == "unet":
        return {
            "channels": list(args.channels),
            "strides": list(args.strides),
            "num_res_units": args.res_units,
        }
    return {}


# --- attack -----------------------------------------------------------------------------------------------


def add_attack_parameters(p: argparse.ArgumentParser) -> None:
    """One flag per attack parameter of the catalogue (each applies to the attacks that have it); values
    are validated by the catalogue, so a bad one is one sentence (exit 2), also with --progress jsonl."""
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


def attack_parameters(args: argparse.Namespace) -> dict:
    """{parameter name: value given on the command line, or None} of `add_attack_parameters`' flags."""
    from ..attacks.catalogue import parameter_flags

    return {name: getattr(args, name) for name in parameter_flags()}


def preset_help() -> str:
    """`--preset` help: the presets of every attack that has some, the default marked."""
    from ..attacks.catalogue import ATTACKS

    listed = {}
    for entry in ATTACKS.values():
        names = [f"{n} [default]" if n == entry.default_preset else n for n in entry.preset_names()]
        if names:
            listed.setdefault(", ".join(names), []).append(entry.name)
    presets = "; ".join(f"{'/'.join(attacks)}: {names}" for names, attacks in listed.items())
    return f"named parameter set ({presets}); a flag given as well overrides its value"


def _add_attack_arguments(p: argparse.ArgumentParser) -> None:
    from ..attacks.catalogue import ATTACKS

    p.add_argument("--image", required=True, help="CT volume (NIfTI, NRRD, MHA or a DICOM folder)")
    p.add_argument("--label", help="reference label map (the attack target; else the clean prediction)")
    p.add_argument("--model", default=DEMO_MODEL, help="model card, bundled name, checkpoint or MONAI bundle")
    p.add_argument("--card", help="card or preset describing a checkpoint/TorchScript --model")
    add_trust_torchscript_argument(p)
    p.add_argument("--attack", required=True, choices=sorted(ATTACKS), help="attack name")
    p.add_argument("--preset", help=preset_help())
    p.add_argument(
        "--organ", nargs="+", default=[], help="organ names (e.g. liver spleen): loss focus and region"
    )
    p.add_argument(
        "--region", default="whole", choices=("whole", "organ", "bbox"), help="where voxels may change"
    )
    p.add_argument("--dilation-mm", type=float, default=10.0, help="organ region dilation, mm (default 10)")
    p.add_argument("--targeted", action="store_true", help="drive the --organ to background (organ removal)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sw-batch-size", type=_positive_int, default=4, help="windows per forward/backward pass")
    p.add_argument("--out", required=True, help="case folder to write")
    p.add_argument("--no-preview", action="store_true", help="do not write preview.png")
    add_attack_parameters(p)


def _attack_request(args: argparse.Namespace, out: Path):
    from ..pipeline.case import AttackRequest

    return AttackRequest(
        image=Path(args.image),
        model=args.model,
        out=out,
        attack=args.attack,
        params=attack_parameters(args),
        preset=args.preset,
        label=Path(args.label) if args.label else None,
        card=args.card,
        organs=args.organ,
        region=args.region,
        dilation_mm=args.dilation_mm,
        targeted=args.targeted,
        seed=args.seed,
        device=resolve_device(args.device),
        sw_batch_size=args.sw_batch_size,
        preview=not args.no_preview,
        command_line=args.command_line,
        trust_torchscript=args.trust_torchscript,
    )


def volume_and_model_inputs(args: argparse.Namespace) -> list:
    """(path, what) of the files `segment`, `attack` and `demo` read: --image, --label, the model, --card."""
    volumes = [(path, option) for path, option in ((args.image, "--image"), (args.label, "--label")) if path]
    return [*volumes, *model_inputs(args.model), *model_inputs(getattr(args, "card", None), "--card")]


def print_attack_summary(metrics: dict, out=None) -> None:
    """Per-organ table clean -> attacked ("-" where the reference lacks the organ) and the perturbation."""
    out = out or sys.stdout
    rows = [
        [
            name,
            _fmt(o.get("dice_clean")),
            _fmt(o.get("dice_adv")),
            _fmt(o.get("hd95_clean_mm"), 1),
            _fmt(o.get("hd95_adv_mm"), 1),
        ]
        for name, o in metrics["organs"].items()
    ]
    print(f"\nDice against {metrics['reference']} (background excluded; '-': not in it):", file=out)
    _print_table(rows, ["organ", "Dice clean", "Dice attacked", "HD95 clean mm", "HD95 attacked mm"], out)
    p = metrics["perturbation"]
    print(
        f"mean Dice {_mean_text(metrics, 'mean_dice_clean')} -> {_mean_text(metrics, 'mean_dice_adv')}; "
        f"mean HD95 mm {_mean_text(metrics, 'mean_hd95_clean_mm', 1)} -> {_mean_text(metrics, 'mean_hd95_adv_mm', 1)}",
        file=out,
    )
    print(
        f"SSIM 3-D {_fmt(p['ssim_3d'], 4)}, axial {_fmt(p['ssim_axial_mean'], 4)}; PSNR {_fmt(p['psnr_db'], 1)} dB; "
        f"L-inf {_fmt(p['linf_hu'], 1)} HU; voxels changed {_fmt(100 * p['fraction_changed'], 1)} %",
        file=out,
    )


def cmd_attack(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Attack one CT volume and write a case folder."""
    from ..evaluation.casefolder import CASE_FILES
    from ..pipeline.case import run_attack

    request = _attack_request(args, Path(args.out))
    with claim_output_folder(args.out, volume_and_model_inputs(args), CASE_FILES):
        metrics = run_attack(request, reporter)
    reporter.close()
    if args.progress != "jsonl":
        print_attack_summary(metrics)
        print(f"case folder: {args.out}")
    return metrics


# --- session ----------------------------------------------------------------------------------------------


def cmd_session_build(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Build a blinded reader session from case folders."""
    from ..studies.session import build_session

    inputs = [(case, "the case folder") for case in args.cases]
    with claim_output_folder(args.out, inputs, writes=None, must_be_new=True):
        key = build_session(
            args.cases, args.readers, args.seed, Path(args.out), args.never_both, args.all_versions
        )
    reporter.close()
    unseen = sum(not item["readers"] for item in key["items"].values())
    if unseen:
        print(
            f"{unseen} cases are in no reader's order (fewer readers than versions of a patient).",
            file=sys.stderr,
        )
    if args.progress != "jsonl":
        print(f"session with {len(key['items'])} cases for {len(key['readers'])} readers: {args.out}")
        print(f"the key is {Path(args.out) / 'key' / 'key.json'}: keep it away from the readers")
    return {"cases": len(key["items"]), "readers": key["readers"]}


def cmd_session_handout(args: argparse.Namespace, reporter: Reporter) -> dict:
    """A reader's copy of a session: their order and only their cases, without the key."""
    from ..studies.session import handout, load_order

    handout(args.session, args.reader, Path(args.out))
    reporter.close()
    cases = len(load_order(args.out, args.reader))
    if args.progress != "jsonl":
        print(f"copy for {args.reader} ({cases} cases, no key): {args.out}")
    return {"reader": args.reader, "cases": cases}


def cmd_session_verify(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Check a session against its manifest; InputError (exit 2) when anything changed."""
    from ..studies.session import verify_session

    problems = verify_session(args.session)
    reporter.close()
    if problems:
        for problem in problems[1:]:
            print(problem, file=sys.stderr)
        raise InputError(problems[0] + (f" ({len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    if args.progress != "jsonl":
        print(f"{args.session}: intact (every file matches manifest.json)")
    return {"session": args.session, "intact": True}


def cmd_session_analyze(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Statistics of the ratings against the key; writes SESSION/report/report.{md,html}."""
    from ..studies.reader_stats import analyze_session

    summary = analyze_session(args.session, args.margin)
    reporter.close()
    for problem in summary["problems"]:
        print(problem, file=sys.stderr)
    pooled = summary["pooled"]
    acc = pooled["accuracy"]
    if acc["value"] is not None and args.progress != "jsonl":
        print(
            f"pooled accuracy {100 * acc['value']:.1f} % ({acc['k']}/{acc['n']}), "
            f"binomial p vs 50 % {acc['p_value']:.3g}, AUC {_fmt(pooled['auc'])}"
        )
    if args.progress != "jsonl":
        print(f"report: {Path(args.session) / 'report' / 'report.html'}")
    return {"pooled_accuracy": acc["value"]}


# --- demo -------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, reporter: Reporter) -> dict:
    """SAA (default preset) on a phantom (or --image) with the bundled model: table, case folder, preview PNG."""
    from ..pipeline.case import AttackRequest, run_attack
    from ..volumes.phantom import write_phantom

    out = Path(args.out)
    device = resolve_device(args.device)
    with claim_output_folder(out, volume_and_model_inputs(args), writes=["input", "case"]):
        if args.image:
            image, label = Path(args.image), Path(args.label) if args.label else None
        else:
            image, label = write_phantom(args.seed, out / "input")
            print(f"phantom of seed {args.seed} (never used in training): {image}", file=sys.stderr)
        request = AttackRequest(
            image=image,
            model=args.model,
            out=out / "case",
            attack=args.attack,
            label=label,
            device=device,
            command_line=args.command_line,
            trust_torchscript=args.trust_torchscript,
        )
        metrics = run_attack(request, reporter)
    reporter.close()
    print(f"\n{args.attack} (default parameters) against {args.model} on {image.name}")
    print_attack_summary(metrics)
    print(f"case folder: {out / 'case'} (preview: {out / 'case' / 'preview.png'})")
    return metrics


# --- parser -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(prog="advseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"advseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, device: bool = True) -> None:
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

    p = sub.add_parser("info", help="describe a volume, label map or model card")
    p.add_argument("file")
    common(p, device=False)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("attacks", help="list the attacks with their parameters, ranges and presets")
    p.add_argument(
        "--json", action="store_true", help="print the catalogue as JSON (what the Slicer module reads)"
    )
    common(p, device=False)
    p.set_defaults(func=cmd_attacks)

    p = sub.add_parser("phantom", help="write a synthetic abdominal CT phantom with BTCV labels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--shape", type=int, nargs=3, default=(128, 112, 96), metavar=("X", "Y", "Z"), help="voxels"
    )
    p.add_argument(
        "--spacing", type=float, nargs=3, default=(3.0, 3.0, 3.0), metavar=("X", "Y", "Z"), help="mm"
    )
    p.add_argument("--contrast", default="portal-venous", help="portal-venous or native")
    common(p, device=False)
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("segment", help="segment a CT volume with a model card")
    p.add_argument("--image", required=True, help="CT volume (NIfTI, NRRD, MHA or a DICOM folder)")
    p.add_argument("--model", default=DEMO_MODEL, help="model card, bundled name, checkpoint or MONAI bundle")
    p.add_argument("--card", help="card or preset describing a checkpoint/TorchScript --model")
    add_trust_torchscript_argument(p)
    p.add_argument("--label", help="reference label map for Dice/HD95")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sw-batch-size", type=_positive_int, default=4, help="windows per forward pass")
    common(p)
    p.set_defaults(func=cmd_segment)

    from ..training.adversarial import add_arguments as add_adversarial_training_arguments

    p = sub.add_parser("train", help="train a segmentation model card (DiceCE, random crops)")
    p.add_argument(
        "--out", required=True, help="output folder (card.json, model.safetensors, train_state.pt)"
    )
    p.add_argument("--name", help="model name in the card")
    p.add_argument("--image", action="append", default=[], help="training CT (repeat)")
    p.add_argument("--label", action="append", default=[], help="its label map (repeat, same order)")
    p.add_argument("--phantoms", type=int, default=0, help="also train on phantoms of seeds 0..N-1")
    p.add_argument("--phantom-spacing", type=float, nargs=3, default=(3.0, 3.0, 3.0), help="mm")
    p.add_argument("--val-image", action="append", default=[], help="validation CT (repeat)")
    p.add_argument("--val-label", action="append", default=[], help="its label map")
    p.add_argument(
        "--val-phantom-seed", type=int, action="append", default=[], help="validation phantom seed"
    )
    p.add_argument("--init", help="fine-tune from this model card")
    add_trust_torchscript_argument(p)
    p.add_argument("--preset", help="architecture preset (btcv-unet, btcv-unetr, btcv-swin-unetr)")
    p.add_argument("--architecture", default="unet", help="unet, unetr, swin-unetr, segresnet")
    p.add_argument("--channels", type=int, nargs="+", default=(16, 32, 64, 128))
    p.add_argument("--strides", type=int, nargs="+", default=(2, 2, 2))
    p.add_argument("--res-units", type=int, default=2)
    p.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 3.0), help="model spacing, mm")
    p.add_argument("--window", type=float, nargs=2, default=(-175.0, 250.0), help="HU window")
    p.add_argument("--roi", type=int, nargs=3, default=(64, 64, 64), help="window size, voxels")
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--steps", type=_positive_int, default=2000)
    p.add_argument("--crops-per-volume", type=_positive_int, default=2)
    p.add_argument("--volumes-per-step", type=_positive_int, default=2)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--validate-every", type=_positive_int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action="store_true", help="ignore a train_state.pt in --out")
    add_adversarial_training_arguments(p)
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("attack", help="attack a CT volume and write a case folder")
    _add_attack_arguments(p)
    common(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("session", help="blinded real-or-manipulated reader sessions")
    session = p.add_subparsers(dest="session_command", required=True)
    q = session.add_parser("build", help="build a session folder from case folders")
    q.add_argument("--cases", nargs="+", required=True, help="case folders written by advseg attack")
    q.add_argument("--readers", type=_positive_int, required=True, help="number of readers")
    q.add_argument("--seed", type=int, default=0, help="seed of IDs and orders")
    q.add_argument("--out", required=True, help="session folder (new or empty)")
    versions = q.add_mutually_exclusive_group()
    versions.add_argument(
        "--never-both", action="store_true", help="each reader sees only one version of each patient"
    )
    versions.add_argument(
        "--all-versions",
        action="store_true",
        help="each reader sees every manipulated version of a patient (default: the real one and one "
        "manipulated version). RISK: the real volume is the voxel-wise centre of three or more versions "
        "of a patient, so a reader who compares them can pick it out",
    )
    common(q, device=False)
    q.set_defaults(func=cmd_session_build)
    q = session.add_parser("handout", help="a reader's copy: their order and cases, without the key")
    q.add_argument("session")
    q.add_argument("--reader", required=True, help="reader name, e.g. reader2")
    q.add_argument("--out", required=True, help="folder for the copy (new or empty)")
    common(q, device=False)
    q.set_defaults(func=cmd_session_handout)
    q = session.add_parser("analyze", help="statistics and report of a session's ratings")
    q.add_argument("session")
    q.add_argument("--margin", type=float, help="TOST equivalence margin around 50 %% (e.g. 0.1)")
    common(q, device=False)
    q.set_defaults(func=cmd_session_analyze)
    q = session.add_parser("verify", help="check a session against its checksum manifest")
    q.add_argument("session")
    common(q, device=False)
    q.set_defaults(func=cmd_session_verify)

    p = sub.add_parser("demo", help="attack a phantom (or --image) with SAA and the bundled model")
    p.add_argument("--image")
    p.add_argument("--label")
    p.add_argument("--model", default=DEMO_MODEL)
    add_trust_torchscript_argument(p)
    p.add_argument("--seed", type=int, default=1000, help="phantom seed (never used in training)")
    p.add_argument("--attack", default="saa", help="attack to run (default saa)")
    p.add_argument("--out", default="out/demo")
    common(p)
    p.set_defaults(func=cmd_demo)

    from .models import add_parser as add_train_texture_ae_parser

    add_train_texture_ae_parser(sub, common)

    from .datasets import add_parser as add_dataset_parsers

    add_dataset_parsers(sub, common)

    from ..studies.export import add_parser as add_export_parser

    add_export_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "advseg " + shlex.join(sys.argv[1:] if argv is None else argv)
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
