"""`advseg attack-dataset` under a real `torchrun` with 2 processes (gloo on CPU): the same outputs as one
process, case by case, and a rank killed mid-run leaves a dataset that a rerun completes.

The 1-process runs happen in this pytest process (`main`), which must not run under torchrun itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_model
from test_dataset_run import attack_args, manifest, voxels, write_dataset

from AdvSegAttackLib.cli import main

CASES = [f"phantom_seed{seed}_image" for seed in range(4)]
VOLUMES = ("adversarial.nii.gz", "pred_clean.nii.gz", "pred_adv.nii.gz")


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def torchrun(args: list[str], processes: int, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command += ["-m", "AdvSegAttackLib.cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, encoding="utf-8", timeout=300, env=environment(**env)
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(datalist of 4 tiny phantoms, tiny model, the folder of a 1-process run as the reference)."""
    root = tmp_path_factory.mktemp("torchrun")
    datalist = write_dataset(root, range(4))
    model = save_tiny_model(root, spacing_mm=6.0, roi=32)
    reference = root / "one-process"
    assert main(attack_args(datalist, model, reference)) == 0  # this pytest process, no torchrun
    return datalist, model, reference


def assert_same_cases(out: Path, reference: Path) -> None:
    records, expected = manifest(out), manifest(reference)
    assert list(records) == CASES and all(r["status"] == "ok" for r in records.values())
    for name in CASES:
        for volume in VOLUMES:
            assert np.array_equal(
                voxels(out / "cases" / name / volume), voxels(reference / "cases" / name / volume)
            )
        assert records[name]["metrics"] == expected[name]["metrics"]
    assert (out / "aggregate.csv").read_text(encoding="utf-8") == (reference / "aggregate.csv").read_text(
        encoding="utf-8"
    )


def test_two_processes_equal_one_process(setup, tmp_path):
    datalist, model, reference = setup
    out = tmp_path / "two"
    result = torchrun(attack_args(datalist, model, out), processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_cases(out, reference)
    by_rank = [
        [
            json.loads(line)["case"]
            for line in (out / f"manifest.rank{rank}.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        for rank in (0, 1)
    ]
    assert by_rank[0] and by_rank[1]  # both ranks took cases
    assert sorted(by_rank[0] + by_rank[1]) == CASES  # each case exactly once
    assert "4 cases: 4 ok" in result.stdout and result.stdout.count("4 cases: 4 ok") == 1  # rank 0 reports


KILL_RANK_1 = """
import os, signal
if os.environ.get("RANK") == "1":
    from AdvSegAttackLib.datasets.runs import ManifestWriter

    def killed(self, record):  # the case folder is complete; its manifest line is not written yet
        os.kill(os.getpid(), signal.SIGKILL)

    ManifestWriter.write = killed
"""


def test_killed_rank_leaves_a_dataset_that_a_rerun_completes(setup, tmp_path):
    datalist, model, reference = setup
    out = tmp_path / "killed"
    # rank 1 gets SIGKILL right after writing its first case folder, before that case's manifest line: a
    # sitecustomize (imported by every Python that starts with it on the path) replaces its manifest writer
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_RANK_1, encoding="utf-8")
    path = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])
    crashed = torchrun(attack_args(datalist, model, out), processes=2, PYTHONPATH=path)
    assert crashed.returncode != 0 and "SIGKILL" in crashed.stderr, crashed.stderr[-3000:]
    assert not (out / "aggregate.csv").exists()
    orphan = [p.name for p in (out / "cases").iterdir() if not p.name.startswith(".")]
    recorded = [
        json.loads(line)["case"]
        for line in (out / "manifest.rank1.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert recorded == [] and orphan  # rank 1's case folder is on disk but was never recorded

    assert main(attack_args(datalist, model, out)) == 0  # the rerun (here in one process) completes it
    assert_same_cases(out, reference)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["ok"] == 4 and summary["failed"] == []
    assert summary["ran_now"] + summary["skipped_now"] == 4 and summary["ran_now"] >= 1
    assert not list((out / "cases").glob(".*staging*"))


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    import torch

    from AdvSegAttackLib.datasets.distributed import barrier, init_distributed, shared_store, shutdown
    from AdvSegAttackLib.errors import InputError

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx, device = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.enabled) == (0, 1, None, True, False)
    assert device == torch.device("cpu") and shared_store(ctx) is None
    barrier(ctx)
    shutdown(ctx)
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("auto")[0].backend is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(InputError, match="RANK=5 is outside 0..1"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(InputError, match="RANK='one' is not an integer"):
        init_distributed("cpu")
