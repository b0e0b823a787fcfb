"""Supervised training of a segmentation model card: DiceCE on random positive/negative crops.

Volumes are brought to model space once and kept in memory; every step draws random crops (MONAI
`RandCropByPosNegLabeld`) with small intensity and spatial augmentation (no flips: left and right organs
differ), validates by sliding-window Dice every `validate_every` steps, keeps the best weights as a card and
checkpoints a resumable state (`train_state.pt`, read back with `weights_only=True`).

Adversarial training (see `training.adversarial`): every step the crops are attacked against
a frozen copy of the current weights and the loss is vanilla (DiceCE on the adversarial crops) or VAFT's
frequency-regularised objective. The card's provenance names the attack and every parameter.

Several processes (`distributed`, from `distributed.init_distributed` under `torchrun`): the network is wrapped
in DistributedDataParallel (gradients averaged over ranks), every rank draws its own crops (rank 0 with the
one-process seed, the others with seeds derived from (seed, rank)) and attacks them, the recorded loss is the
mean over ranks, and only rank 0 validates and writes the card and `train_state.pt`; on resuming, rank 0 reads
it and sends it to the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..datasets.distributed import SINGLE_PROCESS, DistributedContext, barrier
from ..errors import InputError
from ..evaluation.metrics import dice_per_label
from ..models.cards import ModelCard
from ..models.networks import build_network, load_weights_only, save_model
from ..models.segment import model_space, predict_labels
from ..volumes.io import atomic_path
from .adversarial import AdversarialTraining, CropAttacker, adversarial_loss

STATE_FILE = "train_state.pt"

# progress(step, total, loss, validation_dice or None)
TrainProgress = Callable[[int, int, float, float | None], None]


@dataclass
class TrainConfig:
    """Training hyper-parameters (steps are optimiser updates)."""

    steps: int = 2000
    crops_per_volume: int = 2  # random crops per volume per step (half centred on an organ voxel)
    volumes_per_step: int = 2
    learning_rate: float = 2e-3  # AdamW, cosine decay to 1 % over `steps`
    weight_decay: float = 1e-5
    validate_every: int = 200  # steps
    seed: int = 0
    augment: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "crops_per_volume", "volumes_per_step", "validate_every"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            raise InputError(f"--learning-rate must be positive, got {self.learning_rate}.")


@dataclass
class TrainingCase:
    """One labelled volume (HU image, label map on its grid) and a name for provenance."""

    name: str
    image: sitk.Image
    label: sitk.Image
    synthetic: bool = False  # phantoms: together they are drawn as often as all real volumes together


def _augmentations(roi_size: Sequence[int], crops: int, augment: bool):
    from monai.transforms import (
        Compose,
        RandAffined,
        RandCropByPosNegLabeld,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    transforms = [
        RandCropByPosNegLabeld(
            keys=("image", "label"),
            label_key="label",
            spatial_size=tuple(roi_size),
            pos=1,
            neg=1,
            num_samples=crops,
            allow_smaller=True,
        )
    ]
    if augment:
        transforms += [
            RandAffined(
                keys=("image", "label"),
                prob=0.3,
                rotate_range=(0.0, 0.0, 0.15),
                scale_range=(0.1, 0.1, 0.1),
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.3),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.3),
        ]
    return Compose(transforms)


def _pad_to_roi(tensor: torch.Tensor, roi_size: Sequence[int], value: float = 0.0) -> torch.Tensor:
    pads = []
    for size, roi in zip(reversed(tensor.shape[-3:]), reversed(list(roi_size)), strict=True):
        pads += [0, max(0, roi - size)]
    return torch.nn.functional.pad(tensor, pads, value=value)


def _sampling_weights(synthetic: Sequence[bool]) -> np.ndarray:
    """Draw probabilities: real and synthetic volumes get half each when both kinds are present."""
    flags = np.array(synthetic, dtype=bool)
    if flags.all() or not flags.any():
        return np.full(len(flags), 1.0 / len(flags))
    return np.where(flags, 0.5 / flags.sum(), 0.5 / (~flags).sum())


def rank_seed(seed: int, rank: int) -> int:
    """Crop-sampling seed of a rank: `seed` itself on rank 0 (a one-process run is unchanged), on other ranks
    a 31-bit seed derived from (seed, rank), so no two ranks (or resumed steps) share a random stream."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**32, rank]).generate_state(1)[0] >> 1)


def validation_dice(
    model: torch.nn.Module, cases: Sequence[tuple[torch.Tensor, torch.Tensor]], card: ModelCard, device
) -> dict[str, float]:
    """Mean organ Dice (background excluded) over validation cases, per organ name and 'mean'."""
    per_organ: dict[int, list[float]] = {}
    model.eval()
    for tensor, label in cases:
        predicted = predict_labels(model, tensor, card, device).numpy()[0, 0]
        reference = label.numpy()[0, 0]
        for value, dice in dice_per_label(predicted, reference, range(1, card.num_classes)).items():
            if np.isfinite(dice) and (reference == value).any():
                per_organ.setdefault(value, []).append(dice)
    scores = {card.label_names[v]: float(np.mean(d)) for v, d in sorted(per_organ.items())}
    scores["mean"] = float(np.mean(list(scores.values()))) if scores else float("nan")
    return scores


def train(
    card: ModelCard,
    training: Sequence[TrainingCase],
    validation: Sequence[TrainingCase],
    out_dir: str | Path,
    config: TrainConfig,
    device: str | torch.device = "cpu",
    initial: torch.nn.Module | None = None,
    resume: bool = True,
    progress: TrainProgress | None = None,
    command_line: str = "",
    adversarial: AdversarialTraining | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
) -> Path:
    """Train `card`'s network (or fine-tune `initial`, in place) and write the best model card into `out_dir`.

    The card is the one with the best mean validation Dice on clean volumes (without validation data: the
    lowest mean training loss), checked every `validate_every` steps; under torchrun only rank 0 writes.
    """
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    if not training:
        raise InputError("training needs at least one labelled volume (--image/--label or --phantoms).")
    out_dir = Path(out_dir)
    if distributed.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    set_determinism(seed=config.seed)
    seed = rank_seed(config.seed, distributed.rank)
    generator = np.random.default_rng(seed)

    def prepare(case: TrainingCase) -> dict:
        space = model_space(case.image, card)
        label = space.label_to_model(case.label)
        if int(label.max()) >= card.num_classes:
            raise InputError(
                f"label of {case.name} has value {int(label.max())}, beyond the card's {card.num_classes} classes."
            )
        return {
            "image": _pad_to_roi(space.tensor[0], card.roi_size, card.pad_value),
            "label": _pad_to_roi(label[0], card.roi_size),
        }

    train_items = [prepare(case) for case in training]
    weights = _sampling_weights([case.synthetic for case in training])
    val_items = [
        (item["image"][None], item["label"][None]) for item in (prepare(case) for case in validation)
    ]
    sampler = _augmentations(card.roi_size, config.crops_per_volume, config.augment)
    sampler.set_random_state(seed=seed)

    network = (initial if initial is not None else build_network(card)).to(device)
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, config.steps, eta_min=config.learning_rate / 100
    )
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    step, best, history = 0, -float("inf"), []
    adversarial_record = adversarial.provenance() if adversarial is not None else None
    state_path = out_dir / STATE_FILE
    state = None
    if resume and distributed.is_main and state_path.is_file():
        state = load_weights_only(state_path)
    if distributed.enabled:  # rank 0's state for every rank: other nodes need not see `out_dir`
        shared = [state]
        torch.distributed.broadcast_object_list(shared, src=0)
        state = shared[0]
    if state is not None:
        if state.get("adversarial") != adversarial_record:
            raise InputError(
                f"{state_path} was written by a run with other adversarial-training settings; "
                "give the same ones, --restart, or another --out."
            )
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, best, history = int(state["step"]), float(state["best"]), list(state["history"])
        sampler.set_random_state(seed=seed + step)
        generator = np.random.default_rng(seed + step)
    attacker = CropAttacker(network, adversarial.attack, device) if adversarial is not None else None
    model: torch.nn.Module = network
    if distributed.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)

    started = time.time()
    running = []
    while step < config.steps:
        chosen = generator.choice(
            len(train_items), size=min(config.volumes_per_step, len(train_items)), replace=False, p=weights
        )
        crops = [crop for index in chosen for crop in sampler(train_items[index])]
        images = (
            torch.stack([torch.as_tensor(c["image"]) for c in crops]).as_subclass(torch.Tensor).to(device)
        )
        labels = (
            torch.stack([torch.as_tensor(c["label"]) for c in crops]).as_subclass(torch.Tensor).to(device)
        )
        if attacker is not None:
            attacked = attacker(network, images, labels, seed=int(generator.integers(2**31)))
        model.train()
        optimizer.zero_grad(set_to_none=True)
        if attacker is not None:
            loss, _ = adversarial_loss(model, loss_function, images, attacked, labels, adversarial.freq_reg)
        else:
            loss = loss_function(model(images), labels)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        recorded = loss.detach().clone()
        if distributed.enabled:
            torch.distributed.all_reduce(recorded)
            recorded /= distributed.world_size
        running.append(float(recorded))
        score = None
        validate = step % config.validate_every == 0 or step == config.steps
        if validate and distributed.is_main:
            scores = (
                validation_dice(network, val_items, card, device)
                if val_items
                else {"mean": -float(np.mean(running))}
            )
            score = scores["mean"]
            history.append({"step": step, "loss": float(np.mean(running)), "validation_dice": scores})
            if score > best:
                best = score
                card.provenance = {
                    **card.provenance,
                    "training": {
                        "command": command_line,
                        "training_data": [case.name for case in training],
                        "validation_data": [case.name for case in validation],
                        "best_step": step,
                        "validation_dice": scores,
                        "config": asdict(config),
                        "adversarial_training": adversarial_record,
                        "processes": {"world_size": distributed.world_size, "backend": distributed.backend},
                        "seconds": round(time.time() - started, 1),
                    },
                }
                save_model(card, network, out_dir)
            with atomic_path(state_path) as tmp:
                torch.save(
                    {
                        "model": network.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "step": step,
                        "best": best,
                        "history": history,
                        "adversarial": adversarial_record,
                    },
                    tmp,
                )
        if validate:
            running = []
            barrier(distributed)  # the other ranks wait while rank 0 validates and writes
        if progress is not None and distributed.is_main:
            progress(step, config.steps, float(recorded), score)
    return out_dir / ("plans.json" if card.nnunet else "card.json")
