"""`advseg train`: a card with weights and provenance, validation, and resuming where it stopped."""

from __future__ import annotations

import json

import pytest
import torch

from AdvSegAttackLib.cli import main
from AdvSegAttackLib.models.networks import load_model
from AdvSegAttackLib.training.supervised import STATE_FILE

TINY = [
    "--channels",
    "4",
    "8",
    "--strides",
    "2",
    "--res-units",
    "0",
    "--roi",
    "32",
    "32",
    "32",
    "--phantom-spacing",
    "8",
    "8",
    "8",
    "--spacing",
    "8",
    "8",
    "8",
    "--device",
    "cpu",
]


def test_train_writes_a_loadable_card_and_resumes(tmp_path):
    out = tmp_path / "model"
    args = [
        "train",
        "--out",
        str(out),
        "--name",
        "tiny",
        "--phantoms",
        "2",
        "--val-phantom-seed",
        "50",
        "--validate-every",
        "2",
        *TINY,
    ]
    assert main([*args, "--steps", "2"]) == 0
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["step"] == 2 and len(state["history"]) == 1
    card, network = load_model(out)
    assert card.name == "tiny" and card.spacing_mm == [8.0, 8.0, 8.0]
    training = card.provenance["training"]
    assert training["training_data"] == ["phantom seed 0 (portal-venous)", "phantom seed 1 (native)"]
    assert "advseg train" in training["command"] and "validation_dice" in training

    assert main([*args, "--steps", "4"]) == 0  # resumes at step 2, does two more
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["step"] == 4 and [h["step"] for h in state["history"]] == [2, 4]
    json.loads((out / "card.json").read_text(encoding="utf-8"))


def test_train_refuses_mismatched_image_and_label_lists(tmp_path, real_ct_small, capsys):
    status = main(["train", "--out", str(tmp_path / "m"), "--image", str(real_ct_small), *TINY])
    assert status == 2 and "one --label per --image" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--steps", "--validate-every"])
def test_train_refuses_zero_steps(flag, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "m"), flag, "0", *TINY])
    assert exit_info.value.code == 2


class Payload:
    """Any object that needs unpickling."""


def test_resume_state_that_needs_unpickling_is_refused(tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    torch.save({"step": 1, "model": Payload()}, out / STATE_FILE)
    status = main(["train", "--out", str(out), "--phantoms", "1", "--steps", "2", *TINY])
    assert status == 2 and f"{out / STATE_FILE} needs unpickling" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [STATE_FILE]
