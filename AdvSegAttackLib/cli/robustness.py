"""`advseg sweep` (one attack at several budgets), `advseg transfer` (adversarial volumes of source models
scored on target models) and `advseg report` (report.html of a sweep, transfer or dataset-run folder)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..progress import Reporter
from .common import add_attack_options, add_common_options, attack_request, resolve_device


def _add_case_options(p: argparse.ArgumentParser) -> None:
    """One volume (--image, --label) or a dataset split (--data-dir, --datalist, --split)."""
    p.add_argument(
        "--image", help="one CT volume (file or DICOM folder); or a dataset with --datalist/--data-dir"
    )
    p.add_argument(
        "--label", help="its reference label map (else the model's clean prediction is the target)"
    )
    p.add_argument("--data-dir", help="dataset folder (see attack-dataset)")
    p.add_argument("--datalist", help="MONAI decathlon-style datalist JSON")
    p.add_argument("--split", help="datalist split (default validation)")


def _cases(args: argparse.Namespace):
    """The cases of --image/--label or of the dataset options, and the files they come from."""
    from ..datasets.datalist import load_cases, single_case

    if args.image and (args.datalist or args.data_dir):
        raise InputError("give either --image (one volume) or --datalist/--data-dir (a dataset), not both.")
    if args.image:
        return [single_case(args.image, args.label)], []
    if args.label:
        raise InputError("--label goes with --image; a dataset's labels come from --datalist/--data-dir.")
    return load_cases(args.data_dir, args.datalist, args.split), (
        [(args.datalist, "--datalist")] if args.datalist else []
    )


def cmd_sweep(args: argparse.Namespace, reporter: Reporter) -> dict:
    """One attack at every value of one numeric parameter; sweep.csv, cases.csv, sweep.png, report.html."""
    from ..datasets.distributed import init_distributed, shutdown
    from ..datasets.sweep import parse_param, run_sweep

    parameter, values = parse_param(args.param)
    if getattr(args, parameter, None) is not None:
        raise InputError(
            f"--{parameter.replace('_', '-')} is swept by --param; do not give it as a flag too."
        )
    cases, inputs = _cases(args)
    ctx, device = init_distributed(resolve_device(args.device))
    try:
        template = attack_request(args, Path(), None, Path(), device)
        summary = run_sweep(cases, template, parameter, values, Path(args.out), ctx, reporter, inputs)
    finally:
        shutdown(ctx)
    reporter.close()
    if ctx.is_main and args.progress != "jsonl":
        failed = sum(run.failed_total for run in summary.runs.values())
        print(
            f"sweep of {parameter} over {len(summary.runs)} values and {len(cases)} case(s), {failed} failed;"
            f" output: {args.out} (report.html)"
        )
    return {"values": len(summary.runs), "exit_status": summary.exit_status}


def add_sweep(p: argparse.ArgumentParser) -> None:
    _add_case_options(p)
    p.add_argument(
        "--param",
        required=True,
        help="the swept parameter and its values, NAME=V1,V2,... (e.g. eps=1,2,4,8 or rho=0.1,0.3,0.5)",
    )
    p.add_argument("--out", required=True, help="sweep output folder (a rerun completes it)")
    add_attack_options(p, every_case=True)
    add_common_options(p)
    p.set_defaults(func=cmd_sweep)


def cmd_transfer(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Adversarial volumes of every source model scored on every target model; transfer.csv, heat maps."""
    from ..datasets.distributed import init_distributed, shutdown
    from ..datasets.transfer import run_transfer

    cases, inputs = _cases(args)
    ctx, device = init_distributed(resolve_device(args.device))
    try:
        template = attack_request(args, Path(), None, Path(), device)
        summary = run_transfer(
            cases, template, args.source_models, args.target_models, Path(args.out), ctx, reporter, inputs
        )
    finally:
        shutdown(ctx)
    reporter.close()
    if ctx.is_main and args.progress != "jsonl":
        print(
            f"transfer of {len(summary.attacks)} source x {len(args.target_models)} target models on "
            f"{len(cases)} case(s); output: {args.out} (report.html)"
        )
    return {"pairs": len(summary.scores), "exit_status": summary.exit_status}


def add_transfer(p: argparse.ArgumentParser) -> None:
    _add_case_options(p)
    p.add_argument(
        "--source-models",
        nargs="+",
        required=True,
        help="models the attack is crafted on (cards, bundled names)",
    )
    p.add_argument(
        "--target-models", nargs="+", required=True, help="models the adversarial volumes are scored on"
    )
    p.add_argument("--out", required=True, help="transfer output folder (a rerun completes it)")
    add_attack_options(p, every_case=True, model=False)
    add_common_options(p)
    p.set_defaults(func=cmd_transfer)


def cmd_report(args: argparse.Namespace, reporter: Reporter) -> dict:
    """report.html in every folder given."""
    from ..evaluation.robustness_report import write_report

    written = [str(write_report(folder)) for folder in args.folders]
    for path in written:
        print(path)
    return {"reports": written}


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "folders", nargs="+", metavar="DIR", help="sweep, transfer or attack-dataset/evaluate folder"
    )
    add_common_options(p, device=False)
    p.set_defaults(func=cmd_report)


PARSERS = {"sweep": add_sweep, "transfer": add_transfer, "report": add_report}
