"""Output folders (issue 12, "Outputs"): no command writes over its inputs, `--out` problems are refused before
any work, a second command on the same `--out` is refused, files follow the umask (only the session key is
private), and an unexpected error ends with one sentence and a log file. On tiny phantoms and a tiny model."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_model
from test_train import TINY

from AdvSegAttackLib.attacks.texture.weights import BUNDLED_NAME, texture_models_dir
from AdvSegAttackLib.cli import main
from AdvSegAttackLib.volumes.phantom import write_phantom

PHANTOM = {"shape": (36, 32, 30), "spacing": (6.0, 6.0, 6.0)}
COMMANDS = (
    "segment",
    "attack",
    "attack-dataset",
    "evaluate",
    "train",
    "export",
    "session build",
    "train-texture-ae",
    "phantom",
    "demo",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A phantom with its label, a tiny model, a datalist of the phantom and a finished case folder."""
    root = tmp_path_factory.mktemp("outputs")
    model = save_tiny_model(root / "model", spacing_mm=6.0, roi=32)
    image, label = write_phantom(0, root / "data", **PHANTOM)
    datalist = root / "datalist.json"
    datalist.write_text(
        json.dumps({"validation": [{"image": f"data/{image.name}", "label": f"data/{label.name}"}]}),
        encoding="utf-8",
    )
    case = root / "cases" / "case0"
    args = ["attack", "--image", str(image), "--label", str(label), "--model", str(model), "--attack", "pgd"]
    assert main([*args, "--steps", "1", "--no-preview", "--device", "cpu", "--out", str(case)]) == 0
    return {"root": root, "model": model, "image": image, "label": label, "datalist": datalist, "case": case}


def command(name: str, world: dict, out: Path) -> list[str]:
    """Arguments of a cheap, valid run of command `name` writing `out`."""
    image, label, model = str(world["image"]), str(world["label"]), str(world["model"])
    cpu = ["--device", "cpu"]
    args = {
        "segment": ["segment", "--image", image, "--label", label, "--model", model, *cpu],
        "attack": ["attack", "--image", image, "--model", model, "--attack", "gn", "--no-preview", *cpu],
        "attack-dataset": ["attack-dataset", "--datalist", str(world["datalist"]), "--model", model]
        + ["--attack", "gn", "--no-preview", *cpu],
        "evaluate": ["evaluate", "--adv-dir", str(world["case"].parent), "--model", model, *cpu],
        "train": ["train", "--phantoms", "1", "--steps", "1", *TINY],
        "export": ["export", str(world["case"])],
        "session build": [
            "session",
            "build",
            "--cases",
            str(world["case"]),
            "--readers",
            "1",
            "--never-both",
        ],
        "train-texture-ae": ["train-texture-ae", "--image", f"{image}:0:4", "--steps", "1", "--size", "32"]
        + ["--crop", "32", "--batch", "1", *cpu],
        "phantom": ["phantom", "--seed", "1", "--shape", "36", "32", "30", "--spacing", "6", "6", "6"],
        "demo": ["demo", "--image", image, "--label", label, "--model", model, "--attack", "gn", *cpu],
    }[name]
    return [*args, "--out", str(out)]


def one_sentence(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("advseg: error: ") and err[0].endswith("."), err[0]
    return err[0]


def digests(paths) -> dict[Path, str]:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else [])]
    return {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


# --- no command writes over its inputs ----------------------------------------------------------------------


def overwriting_runs(world: dict, tmp_path: Path) -> dict[str, tuple[list[str], list[Path], str]]:
    """{case: (arguments, inputs that must not change, words of the sentence)}: each would overwrite an input."""
    model, cpu = str(world["model"]), ["--device", "cpu"]
    previous = tmp_path / "prev"  # an earlier case folder, attacked again into itself
    shutil.copytree(world["case"], previous)
    segmented = tmp_path / "in"
    segmented.mkdir()
    shutil.copy(world["image"], segmented / "pred.nii.gz")
    card_folder = tmp_path / "M"
    shutil.copytree(world["model"].parent, card_folder)
    weights = tmp_path / "W"
    shutil.copytree(texture_models_dir() / BUNDLED_NAME, weights)
    run = tmp_path / "run"  # a dataset folder whose datalist has a name the run writes
    run.mkdir()
    shutil.copy(world["datalist"], run / "manifest.jsonl")
    image_copy = tmp_path / "ct.nii.gz"
    shutil.copy(world["image"], image_copy)
    demo = tmp_path / "demo"  # an earlier demo, run again on its own case
    shutil.copytree(world["case"], demo / "case")
    attack = ["--model", model, "--attack", "gn", "--no-preview", *cpu]
    texture = ["--steps", "1", "--size", "32", "--crop", "32", "--batch", "1", *cpu]
    return {
        "attack into the case folder of its --image": (
            ["attack", "--image", str(previous / "adversarial.nii.gz"), *attack, "--out", str(previous)],
            [previous],
            "contains --image",
        ),
        "segment into the folder of its --image": (
            [
                "segment",
                "--image",
                str(segmented / "pred.nii.gz"),
                "--model",
                model,
                *cpu,
                "--out",
                str(segmented),
            ],
            [segmented],
            "contains --image",
        ),
        "train into its --init folder": (
            [
                "train",
                "--init",
                str(card_folder),
                "--phantoms",
                "1",
                "--steps",
                "1",
                *TINY,
                "--out",
                str(card_folder),
            ],
            [card_folder],
            "contains the model card of --init",
        ),
        "train into the folder of its --init card": (
            ["train", "--init", str(card_folder / "card.json"), "--phantoms", "1", "--steps", "1", *TINY]
            + ["--out", str(card_folder)],
            [card_folder],
            "contains the model card of --init",
        ),
        "--out is the --image file": (
            ["attack", "--image", str(image_copy), *attack, "--out", str(image_copy)],
            [image_copy],
            "is --image",
        ),
        "attack-dataset over its --datalist": (
            ["attack-dataset", "--datalist", str(run / "manifest.jsonl"), "--data-dir", str(world["root"])]
            + [*attack, "--out", str(run)],
            [run],
            "contains --datalist",
        ),
        "evaluate into its --adv-dir": (
            [
                "evaluate",
                "--adv-dir",
                str(previous.parent),
                "--model",
                model,
                *cpu,
                "--out",
                str(tmp_path / "e"),
            ],
            [previous],
            "is inside --adv-dir",
        ),
        "session build into a case folder": (
            ["session", "build", "--cases", str(previous), "--readers", "1", "--never-both"]
            + ["--out", str(previous / "session")],
            [previous],
            "is inside the case folder",
        ),
        "train-texture-ae into its --init": (
            ["train-texture-ae", "--image", f"{world['image']}:0:4", *texture, "--init", str(weights)]
            + ["--out", str(weights)],
            [weights],
            "is --init",
        ),
        "demo over its --image": (
            ["demo", "--image", str(demo / "case" / "adversarial.nii.gz"), "--model", model, "--attack", "gn"]
            + [*cpu, "--out", str(demo)],
            [demo],
            "contains --image",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "attack into the case folder of its --image",
        "segment into the folder of its --image",
        "train into its --init folder",
        "train into the folder of its --init card",
        "--out is the --image file",
        "attack-dataset over its --datalist",
        "evaluate into its --adv-dir",
        "session build into a case folder",
        "train-texture-ae into its --init",
        "demo over its --image",
    ],
)
def test_no_command_writes_over_its_inputs(case, world, tmp_path, capsys):
    args, protected, words = overwriting_runs(world, tmp_path)[case]
    before = digests(protected)
    assert main(args) == 2
    sentence = one_sentence(capsys)
    assert f"--out {args[args.index('--out') + 1]} {words}" in sentence
    assert digests(protected) == before


# --- --out problems are found before any work -----------------------------------------------------------


@pytest.mark.parametrize("name", COMMANDS)
def test_out_that_is_an_existing_file_is_refused_up_front(name, world, tmp_path, capsys):
    existing = tmp_path / "results.txt"
    existing.write_text("mine", encoding="utf-8")
    assert main(command(name, world, existing)) == 2
    assert f"--out {existing} is an existing file" in one_sentence(capsys)
    assert existing.read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


@pytest.fixture
def immutable_folder(tmp_path):
    """A folder nobody may write in, root included: `chattr +i` (needs CAP_LINUX_IMMUTABLE on ext4/xfs/btrfs)."""
    folder = tmp_path / "immutable"
    folder.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("chattr +i is not permitted here (needs root with CAP_LINUX_IMMUTABLE)")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("name", COMMANDS)
def test_out_in_an_immutable_folder_is_refused_up_front(name, world, immutable_folder, capsys):
    out = immutable_folder / "out"
    assert main(command(name, world, out)) == 2
    sentence = one_sentence(capsys)
    assert f"--out {out} cannot be written: creating a file in {immutable_folder} failed" in sentence
    assert list(immutable_folder.iterdir()) == []


@pytest.mark.parametrize("name", COMMANDS)
def test_out_in_a_folder_without_write_permission_is_refused_up_front(name, world, tmp_path, capsys):
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        try:
            (readonly / "probe").touch()
        except PermissionError:
            pass
        else:  # root with CAP_DAC_OVERRIDE ignores modes (the immutable-folder test runs instead)
            pytest.skip("this process may write into a mode 555 folder")
        out = readonly / "out"
        assert main(command(name, world, out)) == 2
        sentence = one_sentence(capsys)
        assert (
            f"--out {out} cannot be written: creating a file in {readonly} failed (Permission denied)"
            in sentence
        )
        assert list(readonly.iterdir()) == []
    finally:
        readonly.chmod(0o755)


# --- two commands on one --out ----------------------------------------------------------------------------

HOLD_LOCK = "import sys, time, filelock; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(300)"


@pytest.mark.parametrize("name", ["attack", "attack-dataset"])
def test_second_command_on_the_same_out_is_refused_and_a_dead_holder_frees_it(name, world, tmp_path, capsys):
    out = tmp_path / "out"
    lock = tmp_path / ".out.lock"  # the documented lock file: `.<name>.lock` beside the output folder
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(command(name, world, out)) == 2
        sentence = one_sentence(capsys)
        assert (
            f"--out {out} is being written by another advseg command (it holds the lock {lock})" in sentence
        )
        assert not out.exists()
    finally:
        holder.kill()  # a killed holder drops its lock (kill and resume)
        holder.wait()
    assert main(command(name, world, out)) == 0
    assert (out / "metrics.json").is_file() or (out / "manifest.jsonl").is_file()


# --- permissions ------------------------------------------------------------------------------------------


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}


def test_outputs_follow_the_umask_and_only_the_session_key_is_private(world, tmp_path):
    case, session, bundle, phantoms = (tmp_path / n for n in ("case", "session", "bundle", "phantoms"))
    previous = os.umask(0o027)  # group may read, others nothing: not the 0o022 most tests run with
    try:
        assert main(command("attack", world, case)) == 0
        assert main(command("session build", world, session)) == 0
        assert main(command("export", world, bundle)) == 0
        assert main(command("phantom", world, phantoms)) == 0
    finally:
        os.umask(previous)
    for root in (case, bundle, phantoms):
        assert {
            name: mode
            for name, mode in modes(root).items()
            if mode != (0o750 if (root / name).is_dir() else 0o640)
        } == {}
    shared = {name: mode for name, mode in modes(session).items() if not name.startswith("key")}
    assert len(shared) > 5 and "manifest.json" in shared and "readers/reader1/order.json" in shared
    assert {
        name for name, mode in shared.items() if mode != (0o750 if (session / name).is_dir() else 0o640)
    } == set()
    assert modes(session)["key"] == 0o700 and modes(session)["key/key.json"] == 0o600


# --- unexpected errors ------------------------------------------------------------------------------------


def _file_size_limit() -> None:
    """In the child: files may not grow beyond 16 KiB (as on a full disk); writes then fail with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))


@pytest.mark.parametrize("progress", ["tqdm", "jsonl", "debug"])
def test_unexpected_error_ends_with_one_sentence_and_a_log_file(progress, tmp_path):
    logs = tmp_path / "logs"
    args = ["phantom", "--out", str(tmp_path / "p")]
    args += ["--progress", "jsonl"] if progress == "jsonl" else ["--debug"] if progress == "debug" else []
    result = subprocess.run(
        [sys.executable, "-m", "AdvSegAttackLib.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        preexec_fn=_file_size_limit,
        env={**os.environ, "ADVSEG_LOG_DIR": str(logs)},
    )
    assert result.returncode == 1
    (log,) = logs.iterdir()
    text = log.read_text(encoding="utf-8")
    assert text.splitlines()[1] == f"advseg {' '.join(args)}" and "Traceback (most recent call last)" in text
    assert "phantom_seed0_image.nii.gz could not be written completely" in text
    sentence = (
        f"unexpected error (OSError: {tmp_path / 'p' / 'phantom_seed0_image.nii.gz'} could not be written "
        f"completely (disk full or a file size limit?)); the full traceback is in {log} (--debug prints it)."
    )
    if progress == "jsonl":
        assert json.loads(result.stdout.strip().splitlines()[-1]) == {"event": "error", "message": sentence}
    else:
        # the NIfTI library's own complaint may come first; the command's last word is the sentence
        assert result.stderr.strip().splitlines()[-1] == f"advseg: error: {sentence}"
        assert ("Traceback (most recent call last)" in result.stderr) == (progress == "debug")
    assert not (tmp_path / "p" / "phantom_seed0_image.nii.gz").exists()  # nothing partial
