"""`advseg segment`, `advseg train` (also adversarial, also under torchrun) and `advseg train-texture-ae`."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from ..errors import InputError
from ..models.cards import model_inputs
from ..progress import Reporter
from ..volumes.outputs import claim_output_folder
from .common import (
    add_common_options,
    add_model_options,
    add_trust_torchscript_option,
    mean_text,
    nnunet_options,
    number_text,
    positive_int,
    print_table,
    resolve_device,
    volume_and_model_inputs,
)

# --- segment ----------------------------------------------------------------------------------------------


def add_segment(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, help="CT volume (NIfTI, NRRD, MHA or a DICOM folder)")
    add_model_options(p)
    p.add_argument("--label", help="reference label map for Dice/HD95")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sw-batch-size", type=positive_int, default=4, help="windows per forward pass")
    add_common_options(p)
    p.set_defaults(func=cmd_segment)


def segmentation_rows(metrics: dict) -> list[list[str]]:
    """Rows organ, label, Dice, HD95 of a `segment` metrics.json ("-" where the reference lacks the organ)."""
    return [
        [name, str(o["label"]), number_text(o.get("dice_clean")), number_text(o.get("hd95_clean_mm"), 1)]
        for name, o in metrics["organs"].items()
    ]


def cmd_segment(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Segment a volume; with --label, print Dice and HD95 per organ."""
    from ..pipeline.case import SEGMENT_FILES, LoadedModel, run_segment

    device = resolve_device(args.device)
    with claim_output_folder(args.out, volume_and_model_inputs(args), SEGMENT_FILES):
        model = LoadedModel.load(
            args.model, args.card, device, args.sw_batch_size, args.trust_torchscript, nnunet_options(args)
        )
        label = Path(args.label) if args.label else None
        result = run_segment(model, Path(args.image), label, Path(args.out), reporter)
    reporter.close()
    if result["reference"] and args.progress != "jsonl":
        print_table(segmentation_rows(result), ["organ", "label", "Dice", "HD95 mm"])
        print(
            f"mean organ Dice (background excluded) {mean_text(result, 'mean_dice_clean')}, "
            f"mean HD95 {mean_text(result, 'mean_hd95_clean_mm', 1)} mm; '-': not in the reference"
        )
    print(f"wrote {Path(args.out) / 'pred.nii.gz'} and pred.seg.nrrd", file=sys.stderr)
    return result


# --- train ------------------------------------------------------------------------------------------------


def add_train(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--nnunet-plans",
        help="train the network of this nnU-Net v2 plans folder (plans.json, dataset.json) and write --out as an "
        "nnU-Net results folder (fold_0/checkpoint_final.pth); --configuration picks one of its configurations",
    )
    p.add_argument("--configuration", help="with --nnunet-plans: the plans' configuration (e.g. 3d_fullres)")
    add_trust_torchscript_option(p)
    p.add_argument("--preset", help="architecture preset (btcv-unet, btcv-unetr, btcv-swin-unetr)")
    p.add_argument("--architecture", default="unet", help="unet, unetr, swin-unetr, segresnet")
    p.add_argument("--channels", type=int, nargs="+", default=(16, 32, 64, 128))
    p.add_argument("--strides", type=int, nargs="+", default=(2, 2, 2))
    p.add_argument("--res-units", type=int, default=2)
    p.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 3.0), help="model spacing, mm")
    p.add_argument("--window", type=float, nargs=2, default=(-175.0, 250.0), help="HU window")
    p.add_argument("--roi", type=int, nargs=3, default=(64, 64, 64), help="window size, voxels")
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--crops-per-volume", type=positive_int, default=2)
    p.add_argument("--volumes-per-step", type=positive_int, default=2)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--validate-every", type=positive_int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action="store_true", help="ignore a train_state.pt in --out")
    _add_adversarial_training_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_train)


def _add_adversarial_training_options(parser: argparse.ArgumentParser) -> None:
    """The adversarial-training options of `advseg train`."""
    from ..attacks.catalogue import model_space_attacks

    group = parser.add_argument_group("adversarial training")
    group.add_argument(
        "--adv-training",
        action="store_true",
        help="train on crops attacked (every step) against a frozen copy of the current weights",
    )
    group.add_argument(
        "--freq-reg",
        action="store_true",
        help="with --adv-training: DiceCE(clean) + DiceCE(adv) + |DCT(z)-DCT(z_adv)|_1/|DCT(z)|_1 on logits",
    )
    group.add_argument(
        "--train-attack",
        choices=sorted(model_space_attacks()),
        help="attack generating the adversarial crops (default pgd)",
    )
    group.add_argument(
        "--train-attack-preset", help="named parameter set of --train-attack (saa: specified, authors-final)"
    )
    group.add_argument(
        "--train-attack-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter of --train-attack as in `advseg attack` without the dashes, e.g. eps=4, steps=5, "
        "block-size=16 (repeat)",
    )


def _adversarial_training(args: argparse.Namespace):
    """The `training.adversarial.AdversarialTraining` the adversarial-training options ask for, or None
    without --adv-training."""
    from ..training.adversarial import DEFAULT_ATTACK, AdversarialTraining

    if not args.adv_training:
        given = args.freq_reg or args.train_attack or args.train_attack_param or args.train_attack_preset
        if given:
            raise InputError("--freq-reg and --train-attack-* options need --adv-training.")
        return None
    return AdversarialTraining.from_options(
        args.train_attack or DEFAULT_ATTACK, args.train_attack_param, args.train_attack_preset, args.freq_reg
    )


def cmd_train(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Train a model card from labelled volumes and/or phantoms (adversarially; under torchrun with DDP)."""
    from ..datasets.distributed import init_distributed, shutdown
    from ..models.cards import CARD_FILE, WEIGHTS_FILE
    from ..training.supervised import STATE_FILE

    if len(args.image) != len(args.label):
        raise InputError(
            f"give one --label per --image ({len(args.image)} images, {len(args.label)} labels)."
        )
    if len(args.val_image) != len(args.val_label):
        raise InputError("give one --val-label per --val-image.")
    adversarial = _adversarial_training(args)
    distributed, device = init_distributed(resolve_device(args.device))
    volumes = {"--image": args.image, "--label": args.label, "--val-image": args.val_image}
    volumes["--val-label"] = args.val_label
    inputs = [(path, option) for option, paths in volumes.items() for path in paths]
    inputs += model_inputs(args.init, "--init") + model_inputs(args.nnunet_plans, "--nnunet-plans")
    if args.nnunet_plans and args.init:
        raise InputError("give --init (fine-tuning) or --nnunet-plans (a new nnU-Net network), not both.")
    try:
        writes = (CARD_FILE, WEIGHTS_FILE, STATE_FILE, "plans.json", "dataset.json", "fold_0")
        with claim_output_folder(args.out, inputs, writes, ctx=distributed):
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
    elif args.nnunet_plans:
        from ..models.nnunet import nnunet_card

        card = nnunet_card(args.nnunet_plans, args.configuration, training=True)
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


# --- train-texture-ae -------------------------------------------------------------------------------------


def add_train_texture_ae(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (autoencoders.safetensors, card.json)")
    p.add_argument(
        "--image", action="append", default=[], metavar="CT[:Z0:Z1]",
        help="training CT volume, optionally only axial slices Z0..Z1-1 in LPS order (repeat)",
    )  # fmt: skip
    p.add_argument(
        "--val-image", action="append", default=[], metavar="CT[:Z0:Z1]",
        help="held-out CT volume or slab for the reconstruction PSNR (repeat)",
    )  # fmt: skip
    p.add_argument("--phantoms", type=int, default=0, help="also train on phantoms of seeds 0..N-1")
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[600],
        help="optimiser steps: one count, or one per --levels entry",
    )
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="levels to train")
    p.add_argument("--size", type=int, default=256, help="slices are resized to SIZE x SIZE pixels")
    p.add_argument("--crop", type=int, default=128, help="training crop, pixels")
    p.add_argument("--batch", type=int, default=4, help="crops per step")
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--feature-weight", type=float, default=0.1, help="weight of the feature loss")
    p.add_argument(
        "--window", type=float, nargs=2, default=(-135.0, 215.0), metavar=("LOW", "HIGH"), help="HU"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init", help="start from these weights (bundled, or a weights folder); needed with --levels"
    )
    p.add_argument("--name", default="ct-16x", help="name in the card")
    add_common_options(p)
    p.set_defaults(func=cmd_train_texture_ae)


def _sources(specs: list[str], what: str):
    from ..training.texture_autoencoders import SliceSource, parse_volume_spec
    from ..volumes.io import read_image, sha256_file

    sources = []
    for spec in specs:
        path, start, stop = parse_volume_spec(spec)
        if not path.exists():
            raise InputError(f"{what} {spec}: {path} does not exist.")
        description = {"file": path.name, "sha256": sha256_file(path), "slices": [start, stop]}
        sources.append(SliceSource(name=path.name, image=read_image(path), start=start, stop=stop,
                                   description=description))  # fmt: skip
    return sources


def _own_training_record(initial) -> dict | None:
    """The `training` record of the card of project-trained --init weights (so a card keeps its history)."""
    import json

    from ..attacks.texture.weights import BUNDLED_NAME, OWN_CARD_FILE, texture_models_dir

    if initial is None or not initial.source.startswith(("bundled:", "ct-16x:")):
        return None
    folder = texture_models_dir() / BUNDLED_NAME if initial.source.startswith("bundled:") else None
    folder = folder or Path(initial.source.split(":", 1)[1])
    card = folder / OWN_CARD_FILE
    return json.loads(card.read_text(encoding="utf-8")).get("training") if card.is_file() else None


def cmd_train_texture_ae(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Train, measure held-out PSNR per level, write the weights and their card."""
    from ..attacks.texture.weights import BUNDLED_NAME, OWN_CARD_FILE, OWN_WEIGHTS_FILE, texture_models_dir
    from ..training.texture_autoencoders import TextureTrainConfig, parse_volume_spec
    from ..volumes.outputs import claim_output_folder

    if args.phantoms < 0:
        raise InputError(f"--phantoms must be >= 0, got {args.phantoms}.")
    config = TextureTrainConfig(
        steps=tuple(args.steps), levels=tuple(args.levels), size=args.size, crop=args.crop, batch=args.batch,
        learning_rate=args.learning_rate, feature_weight=args.feature_weight,
        window_hu=(args.window[0], args.window[1]), seed=args.seed,
    )  # fmt: skip
    device = resolve_device(args.device)
    inputs = [(parse_volume_spec(spec)[0], option) for option, specs in (("--image", args.image),
              ("--val-image", args.val_image)) for spec in specs]  # fmt: skip
    if args.init:  # a weights folder, else a name of the bundled weights
        init = Path(args.init)
        inputs.append((init if init.exists() else texture_models_dir() / BUNDLED_NAME, "--init"))
    with claim_output_folder(args.out, inputs, writes=(OWN_WEIGHTS_FILE, OWN_CARD_FILE)):
        return _train_and_write(args, reporter, config, device)


def _train_and_write(args: argparse.Namespace, reporter: Reporter, config, device) -> dict:
    """The training of `cmd_train_texture_ae` once its options and output folder are checked."""
    import torch

    from ..attacks.texture.networks import LEVELS
    from ..attacks.texture.weights import load_texture_autoencoders
    from ..training.texture_autoencoders import (
        SliceSource,
        config_dict,
        gather_slices,
        reconstruction_psnr,
        save_texture_autoencoders,
        train_texture_autoencoders,
    )
    from ..volumes.phantom import make_phantom

    initial = load_texture_autoencoders(args.init) if args.init else None
    initial_training = _own_training_record(initial)
    train_sources = _sources(args.image, "--image")
    for seed in range(args.phantoms):
        image, _ = make_phantom(seed)
        train_sources.append(SliceSource(name=f"phantom seed {seed}", image=image,
                                         description={"phantom_seed": seed}))  # fmt: skip
    val_sources = _sources(args.val_image, "--val-image")
    train_slices = gather_slices(train_sources, config)

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    networks, log = train_texture_autoencoders(
        train_slices, config, initial=initial, device=device,
        progress=lambda level, step, total, loss: reporter.progress(
            f"texture AE level {level}", step, total, loss=loss),
    )  # fmt: skip
    reporter.close()
    psnr: dict[str, dict[str, float]] = {}
    for source in val_sources:
        slices = gather_slices([source], config)
        psnr[f"{source.name}:{source.start}:{'' if source.stop is None else source.stop}"] = {
            str(k): round(reconstruction_psnr(networks, slices, k), 2) for k in LEVELS
        }
    card = {
        "name": args.name,
        "kind": "texture-autoencoders",
        "what": "CT encoder/decoder pairs, levels 1-5, 16x-distilled VGG-19 layout, trained by the project "
        "for reconstruction of axial CT slices (not VGG features)",
        "input": {"window_hu": list(config.window_hu), "working_size": config.size, "channels": "grey x3"},
        "training": {
            "command": args.command_line,
            "config": config_dict(config),
            "train_data": [s.description for s in train_sources],
            "train_slices": int(len(train_slices)),
            "init": initial.source if initial is not None else None,
            "init_training": initial_training,
            "levels": {str(k): v for k, v in log.items()},
            "device": str(device),
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "validation": {"data": [s.description for s in val_sources], "psnr_db": psnr},
    }
    save_texture_autoencoders(networks, card, Path(args.out))
    for name, values in psnr.items():
        print(f"held-out PSNR (dB) on {name}: " + ", ".join(f"L{k} {v:.2f}" for k, v in values.items()))
    print(f"texture auto-encoders written to {args.out}")
    return card


PARSERS = {"segment": add_segment, "train": add_train, "train-texture-ae": add_train_texture_ae}
