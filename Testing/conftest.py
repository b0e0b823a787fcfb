"""Shared fixtures: the real CT of ../shared (skipped on a user's machine, required when CI=true)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ADVSEG_SHARED", REPO.parent / "shared"))


def shared_path(relative: str) -> Path:
    """Path of a file in ../shared; skips the test when it is missing (fails under CI=true)."""
    path = SHARED / relative
    if not path.exists():
        message = f"{path} not found: the real CT and weights of ../shared are not on this machine"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def real_ct() -> Path:
    return shared_path("data/real/totalsegmentator/example_ct.nii.gz")


@pytest.fixture(scope="session")
def real_ct_labels() -> Path:
    return shared_path("data/real/btcv13/example_ct_btcv13_from_tsv1highres.nii.gz")


@pytest.fixture(scope="session")
def real_ct_small() -> Path:
    return shared_path("data/real/totalsegmentator/example_ct_sm.nii.gz")


@pytest.fixture(scope="session")
def real_ct_small_labels() -> Path:
    return shared_path("data/real/btcv13/example_ct_sm_btcv13_from_tsv2.nii.gz")


@pytest.fixture(scope="session")
def msd_spleen() -> tuple[Path, Path]:
    return (
        shared_path("data/real/msd_spleen/sub-spleen2_ct.nii.gz"),
        shared_path("data/real/msd_spleen/sub-spleen2_ct_seg-manual.nii.gz"),
    )


def save_tiny_model(folder: Path, spacing_mm: float, roi: int) -> Path:
    """A randomly initialised, very small UNet card (for pipeline plumbing, not for accuracy)."""
    from AdvSegAttackLib.cards import ModelCard, save_model

    card = ModelCard(
        name="tiny",
        architecture="unet",
        arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0},
        spacing_mm=[spacing_mm] * 3,
        roi_size=[roi] * 3,
    )
    return save_model(card, card.build_network(), folder / "tiny")
