"""`advseg train-texture-ae`: train the project's own CT texture auto-encoders (levels 1-5)."""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from ..errors import InputError
from ..progress import Reporter


def add_parser(sub, common) -> None:
    """Register `train-texture-ae` on the `advseg` sub-parsers (`common` adds --progress/--device)."""
    p = sub.add_parser(
        "train-texture-ae", help="train the CT encoder/decoder pairs of the texture attack (levels 1-5)"
    )
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
    common(p)
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
    from . import resolve_device

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
