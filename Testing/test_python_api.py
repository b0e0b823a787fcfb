"""The Python API (`from AdvSegAttackLib import load_model, segment, attack, sweep`): the worked example of
docs/python-api.md runs as written, and the API checks its input like the command line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import AdvSegAttackLib
from AdvSegAttackLib.errors import InputError

DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


def code_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL)


@pytest.mark.slow
def test_the_worked_example_of_the_docs_runs(capsys):
    blocks = code_blocks(DOC)
    assert len(blocks) == 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # the docs' own asserts check the results
    printed = capsys.readouterr().out
    assert "liver Dice" in printed and "eps 8: mean organ Dice" in printed
    print(printed)


def test_the_api_is_importable_from_the_package_without_loading_it_at_import():
    for name in AdvSegAttackLib.API:
        assert callable(getattr(AdvSegAttackLib, name))
    assert set(AdvSegAttackLib.API) <= set(dir(AdvSegAttackLib))
    with pytest.raises(AttributeError):
        AdvSegAttackLib.nothing_of_that_name  # noqa: B018


def test_bad_volumes_and_parameters_are_one_sentence(tmp_path):
    from conftest import save_tiny_model

    from AdvSegAttackLib import as_image, attack, load_model, segment, sweep

    model = load_model(save_tiny_model(tmp_path, spacing_mm=6.0, roi=32))
    volume = np.zeros((10, 12, 14), np.float32)
    with pytest.raises(InputError, match="give its spacing"):
        segment(model, volume)
    with pytest.raises(InputError, match="2-D array"):
        as_image(np.zeros((4, 4)), spacing=(1, 1, 1))
    volume[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="the image contains 1 NaN"):
        segment(model, volume, spacing=(6, 6, 6))
    image = as_image(np.zeros((10, 12, 14), np.int16), spacing=(6, 6, 6))
    with pytest.raises(InputError, match="has its own geometry"):
        segment(model, image, spacing=(1, 1, 1))
    with pytest.raises(InputError, match="the label has shape"):
        attack(model, image, "pgd", label=np.ones((3, 3, 3), np.uint8))
    with pytest.raises(InputError, match="--eps must be"):
        attack(model, image, "pgd", eps=-1)
    with pytest.raises(InputError, match="--param rho is not a numeric parameter of --attack pgd"):
        sweep(model, image, "pgd", "rho", [0.1])
    labels = segment(model, image)  # a random tiny model: any labels, on the image's grid
    assert labels.GetSize() == image.GetSize() and labels.GetSpacing() == image.GetSpacing()
    assert labels.GetPixelID() == sitk.sitkUInt8
