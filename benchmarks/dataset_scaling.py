"""Cases per minute of `advseg attack-dataset` with 1 and 2 processes under `torchrun`, and their ratio.

A dataset of phantoms (seeds 2000.., never used in training; default 128x112x96 voxels at 3 mm) is
attacked with the bundled model and a cheap attack (PGD, 2 steps), once per process count, each run a
fresh `torchrun --standalone --nproc-per-node N` (so start-up, model loading and the final merge count,
as they do for a user). Every process uses `--threads` intra-op threads (default 1). The runs must agree
case by case (same manifest metrics), which is checked. Prints a Markdown table.

    .venv/bin/python benchmarks/dataset_scaling.py [--cases 8] [--processes 1 2] [--attack pgd --steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_dataset(folder: Path, cases: int, shape: tuple[int, int, int]) -> Path:
    """Phantoms of seeds 2000.. in FOLDER/data and a datalist with them as the `validation` split."""
    from AdvSegAttackLib.volumes.phantom import write_phantom

    items = []
    for seed in range(2000, 2000 + cases):
        contrast = "native" if seed % 2 else "portal-venous"
        image, label = write_phantom(seed, folder / "data", shape=shape, contrast=contrast)
        items.append({"image": f"data/{image.name}", "label": f"data/{label.name}"})
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"validation": items}), encoding="utf-8")
    return datalist


def run(processes: int, datalist: Path, out: Path, args: argparse.Namespace) -> tuple[float, dict]:
    """(wall seconds, manifest by case) of one torchrun job."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command += ["-m", "AdvSegAttackLib.cli", "attack-dataset", "--datalist", str(datalist)]
    command += ["--model", args.model, "--attack", args.attack, "--steps", str(args.steps)]
    command += ["--no-preview", "--device", args.device, "--progress", "jsonl", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"torchrun with {processes} processes failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    return seconds, {r["case"]: r for r in records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8, help="phantom cases in the dataset")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to time")
    parser.add_argument("--model", default="abdomen-unet")
    parser.add_argument("--attack", default="pgd")
    parser.add_argument("--steps", type=int, default=2, help="attack steps per case")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 112, 96), help="phantom voxels (3 mm)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="advseg-scaling-") as tmp:
        datalist = write_dataset(Path(tmp), args.cases, tuple(args.shape))
        rows, reference = [], None
        for processes in args.processes:
            seconds, records = run(processes, datalist, Path(tmp) / f"out-{processes}", args)
            failed = [name for name, r in records.items() if r["status"] != "ok"]
            if failed or len(records) != args.cases:
                sys.exit(f"{processes} processes: cases not ok: {failed or 'missing cases'}")
            metrics = {name: r["metrics"] for name, r in records.items()}
            if reference is not None and metrics != reference:
                sys.exit(f"{processes} processes gave other metrics than {args.processes[0]} process(es)")
            reference = metrics
            busy = sum(r["seconds"] for r in records.values())
            rows.append((processes, seconds, 60.0 * args.cases / seconds, busy / args.cases))
            print(f"{processes} process(es): {seconds:.1f} s", file=sys.stderr)

    print(
        f"\n{args.cases} phantom cases {'x'.join(map(str, args.shape))} voxels, {args.attack} {args.steps} steps,"
        f" model {args.model}, {args.threads} thread(s) per process, {os.cpu_count()} CPU cores\n"
    )
    print("| processes | wall time (s) | cases / min | mean s per case (in its process) |")
    print("|---:|---:|---:|---:|")
    for processes, seconds, per_minute, per_case in rows:
        print(f"| {processes} | {seconds:.1f} | {per_minute:.2f} | {per_case:.1f} |")
    base = rows[0][2]
    for processes, _, per_minute, _ in rows[1:]:
        print(f"\nratio {processes} : {rows[0][0]} processes = {per_minute / base:.2f}x cases per minute")


if __name__ == "__main__":
    main()
