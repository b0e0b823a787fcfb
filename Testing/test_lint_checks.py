"""`tools/lint_checks.py` (run by `make lint`): views of freed SimpleITK images are refused."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("lint_checks", REPO / "tools" / "lint_checks.py")
lint_checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lint_checks)


def codes(source: str) -> list[str]:
    return [code for _, _, code, _ in lint_checks.check_source(textwrap.dedent(source))]


BAD = {
    "view of a call": "v = sitk.GetArrayViewFromImage(read_image(path))\n",
    "bare import, keyword": "v = GetArrayViewFromImage(image=sitk.ReadImage(p))\n",
    "view of image arithmetic": "v = sitk.GetArrayViewFromImage(a + b)\n",
    "view of an image slice": "v = sitk.GetArrayViewFromImage(image[::2])\n",
    "attribute of a temporary": "v = sitk.GetArrayViewFromImage(load().image)\n",
    "returned directly": """
        def f(path):
            image = read_image(path)
            return sitk.GetArrayViewFromImage(image)
        """,
    "returned through a name and a reshape": """
        def f(path):
            image = read_image(path)
            voxels = sitk.GetArrayViewFromImage(image)
            flat = voxels.reshape(-1)
            return flat
        """,
    "returned in a tuple, transposed": """
        def f(path):
            image = sitk.Cast(read_image(path), sitk.sitkFloat32)
            return image.GetSpacing(), sitk.GetArrayViewFromImage(image).T
        """,
    "returned through np.asarray and a slice": """
        def f(path):
            image = read_image(path)
            return np.asarray(sitk.GetArrayViewFromImage(image))[1:]
        """,
    "yielded": """
        def f(paths):
            for path in paths:
                image = read_image(path)
                yield sitk.GetArrayViewFromImage(image)
        """,
    "parameter rebound to a new image": """
        def f(image):
            image = sitk.Cast(image, sitk.sitkInt16)
            return {"voxels": sitk.GetArrayViewFromImage(image)}
        """,
    "torch tensor sharing the buffer": """
        def f(path):
            image = read_image(path)
            return torch.from_numpy(sitk.GetArrayViewFromImage(image))
        """,
}

GOOD = {
    "view of a held image": """
        def f(path):
            image = read_image(path)
            voxels = sitk.GetArrayViewFromImage(image)
            return float(voxels.min()), voxels.max()
        """,
    "copy returned": """
        def f(path):
            image = read_image(path)
            return sitk.GetArrayViewFromImage(image).copy()
        """,
    "astype copy returned": """
        def f(path):
            image = read_image(path)
            return sitk.GetArrayViewFromImage(image).astype(np.float32)
        """,
    "GetArrayFromImage of a call": "v = sitk.GetArrayFromImage(read_image(path))\n",
    "view of a parameter (the caller holds it)": """
        def f(image):
            return sitk.GetArrayViewFromImage(image)
        """,
    "view of an attribute": """
        class Holder:
            def voxels(self):
                return sitk.GetArrayViewFromImage(self.image)
        """,
    "nested function returns its own copy": """
        def f(path):
            image = read_image(path)
            def inner():
                return np.array(sitk.GetArrayViewFromImage(image))
            return inner
        """,
    "global image": """
        def f(path):
            global IMAGE
            IMAGE = read_image(path)
            return sitk.GetArrayViewFromImage(IMAGE)
        """,
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_patterns_are_flagged(name):
    assert codes(BAD[name]), name


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_patterns_pass(name):
    assert codes(GOOD[name]) == [], name


def test_findings_name_file_line_and_exit_status(tmp_path):
    bad = tmp_path / "pkg" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "import SimpleITK as sitk\n\nv = sitk.GetArrayViewFromImage(sitk.ReadImage('x'))\n", "utf-8"
    )
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "ignored.py").write_text(BAD["view of a call"], encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "lint_checks.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{bad}:3:5: AV1 GetArrayViewFromImage of a temporary image (freed when the call returns): "
        "bind the image to a name first, or use GetArrayFromImage"
    ]


def test_the_tree_is_clean():
    """The engine, the Slicer module, tests, benchmarks and tools hold neither pattern (what `make lint` runs)."""
    folders = [REPO / name for name in ("AdvSegAttackLib", "AdvSegAttack", "Testing", "benchmarks", "tools")]
    findings = [
        f"{file}:{line}: {code}"
        for file in lint_checks.python_files(folders)
        for line, _, code, _ in lint_checks.check_source(file.read_text(encoding="utf-8"), str(file))
    ]
    assert findings == []
