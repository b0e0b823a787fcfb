"""`advseg attack-dataset` and `advseg evaluate`: dataset runs, alone or under `torchrun`.

Both run unchanged as one process or as `torchrun --nproc-per-node N -m AdvSegAttackLib.cli …`
(see `distributed`); the cases are shared among the ranks, rank 0 writes the aggregate. Exit status:
0 when every case is ok, 1 when any case failed (the others are still done), 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from ..progress import Reporter
from .common import (
    add_attack_options,
    add_common_options,
    add_model_options,
    attack_request,
    nnunet_options,
    positive_int,
    resolve_device,
)


def _add_dataset_options(p: argparse.ArgumentParser) -> None:
    """--data-dir, --datalist and --split: which cases."""
    p.add_argument(
        "--data-dir",
        help="dataset folder: the base of the --datalist paths (default: the datalist's folder), "
        "or a plain folder with imagesTr/labelsTr",
    )
    p.add_argument("--datalist", help="MONAI decathlon-style datalist JSON ({split: [{image, label}]})")
    p.add_argument(
        "--split",
        help="datalist split (default validation; plain folders: training = imagesTr, test = imagesTs)",
    )


def _datalist_input(args: argparse.Namespace) -> list:
    """The --datalist as an input of the run (an --out must never overwrite it)."""
    return [(args.datalist, "--datalist")] if args.datalist else []


def _print_summary(summary, out_dir: Path, reporter_kind: str) -> None:
    from ..datasets.runs import AGGREGATE_MD

    if reporter_kind != "jsonl":
        print((out_dir / AGGREGATE_MD).read_text(encoding="utf-8"))
        print(
            f"{summary.total} cases: {len(summary.ok)} ok ({summary.ran} run now, {summary.skipped} already done),"
            f" {summary.failed_total} failed; output: {out_dir}"
        )
    for name, sentence in summary.failed.items():
        print(f"advseg: failed case {name}: {sentence}", file=sys.stderr)


def cmd_attack_dataset(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Attack every case of a dataset split; one case folder each, manifest and aggregate table."""
    from ..datasets.datalist import load_cases
    from ..datasets.distributed import init_distributed, shutdown
    from ..datasets.runs import attack_dataset

    ctx, device = init_distributed(resolve_device(args.device))
    try:
        cases = load_cases(args.data_dir, args.datalist, args.split)
        template = attack_request(args, Path(), None, Path(), device)  # image, label and out: per case
        summary = attack_dataset(cases, template, Path(args.out), ctx, reporter, _datalist_input(args))
    finally:
        shutdown(ctx)
    reporter.close()
    if ctx.is_main:
        _print_summary(summary, Path(args.out), args.progress)
    return {"cases": summary.total, "failed": summary.failed_total, "exit_status": summary.exit_status}


def cmd_evaluate(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Segment saved adversarial volumes (and their clean images); the same aggregate table."""
    from ..datasets.datalist import load_cases
    from ..datasets.distributed import init_distributed, shutdown
    from ..datasets.runs import cases_from_case_folders, evaluate_dataset, match_adversarial

    adv_dir, out = Path(args.adv_dir), Path(args.out)
    if not adv_dir.is_dir():
        raise InputError(f"--adv-dir {adv_dir} is not a folder.")
    ctx, device = init_distributed(resolve_device(args.device))
    try:
        if args.datalist or args.data_dir:
            cases = match_adversarial(load_cases(args.data_dir, args.datalist, args.split), adv_dir)
        else:
            cases = cases_from_case_folders(adv_dir)
        summary = evaluate_dataset(
            cases,
            args.model,
            args.card,
            out,
            ctx,
            device,
            reporter,
            args.sw_batch_size,
            adv_dir,
            _datalist_input(args),
            trust_torchscript=args.trust_torchscript,
            nnunet=nnunet_options(args),
        )
    finally:
        shutdown(ctx)
    reporter.close()
    if ctx.is_main:
        _print_summary(summary, out, args.progress)
    return {"cases": summary.total, "failed": summary.failed_total, "exit_status": summary.exit_status}


def add_attack_dataset(p: argparse.ArgumentParser) -> None:
    _add_dataset_options(p)
    p.add_argument("--out", required=True, help="dataset output folder (a rerun completes it)")
    add_attack_options(p, every_case=True)
    add_common_options(p)
    p.set_defaults(func=cmd_attack_dataset)


def add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adv-dir",
        required=True,
        help="attack-dataset output, folder of case folders, or flat folder of adversarial volumes",
    )
    _add_dataset_options(p)
    add_model_options(p)
    p.add_argument("--sw-batch-size", type=positive_int, default=4, help="windows per forward pass")
    p.add_argument("--out", required=True, help="evaluation output folder")
    add_common_options(p)
    p.set_defaults(func=cmd_evaluate)


PARSERS = {"attack-dataset": add_attack_dataset, "evaluate": add_evaluate}
