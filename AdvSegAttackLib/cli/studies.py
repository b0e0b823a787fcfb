"""`advseg session build|handout|verify|analyze` (blinded reader sessions) and `advseg export` (case bundles);
no torch: a reader workstation needs none."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from ..progress import Reporter
from ..volumes.outputs import claim_output_folder
from .common import add_common_options, number_text, positive_int


def add_session(p: argparse.ArgumentParser) -> None:
    session = p.add_subparsers(dest="session_command", required=True)
    q = session.add_parser("build", help="build a session folder from case folders")
    q.add_argument("--cases", nargs="+", required=True, help="case folders written by advseg attack")
    q.add_argument("--readers", type=positive_int, required=True, help="number of readers")
    q.add_argument("--seed", type=int, default=0, help="seed of IDs and orders")
    q.add_argument("--out", required=True, help="session folder (new or empty)")
    versions = q.add_mutually_exclusive_group()
    versions.add_argument(
        "--never-both", action="store_true", help="each reader sees only one version of each patient"
    )
    versions.add_argument(
        "--all-versions",
        action="store_true",
        help="each reader sees every manipulated version of a patient (default: the real one and one "
        "manipulated version). RISK: the real volume is the voxel-wise centre of three or more versions "
        "of a patient, so a reader who compares them can pick it out",
    )
    add_common_options(q, device=False)
    q.set_defaults(func=cmd_session_build)
    q = session.add_parser("handout", help="a reader's copy: their order and cases, without the key")
    q.add_argument("session")
    q.add_argument("--reader", required=True, help="reader name, e.g. reader2")
    q.add_argument("--out", required=True, help="folder for the copy (new or empty)")
    add_common_options(q, device=False)
    q.set_defaults(func=cmd_session_handout)
    q = session.add_parser("analyze", help="statistics and report of a session's ratings")
    q.add_argument("session")
    q.add_argument("--margin", type=float, help="TOST equivalence margin around 50 %% (e.g. 0.1)")
    add_common_options(q, device=False)
    q.set_defaults(func=cmd_session_analyze)
    q = session.add_parser("verify", help="check a session against its checksum manifest")
    q.add_argument("session")
    add_common_options(q, device=False)
    q.set_defaults(func=cmd_session_verify)


def cmd_session_build(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Build a blinded reader session from case folders."""
    from ..studies.session import build_session

    inputs = [(case, "the case folder") for case in args.cases]
    with claim_output_folder(args.out, inputs, writes=None, must_be_new=True):
        key = build_session(
            args.cases, args.readers, args.seed, Path(args.out), args.never_both, args.all_versions
        )
    reporter.close()
    unseen = sum(not item["readers"] for item in key["items"].values())
    if unseen:
        print(
            f"{unseen} cases are in no reader's order (fewer readers than versions of a patient).",
            file=sys.stderr,
        )
    if args.progress != "jsonl":
        print(f"session with {len(key['items'])} cases for {len(key['readers'])} readers: {args.out}")
        print(f"the key is {Path(args.out) / 'key' / 'key.json'}: keep it away from the readers")
    return {"cases": len(key["items"]), "readers": key["readers"]}


def cmd_session_handout(args: argparse.Namespace, reporter: Reporter) -> dict:
    """A reader's copy of a session: their order and only their cases, without the key."""
    from ..studies.session import handout, load_order

    handout(args.session, args.reader, Path(args.out))
    reporter.close()
    cases = len(load_order(args.out, args.reader))
    if args.progress != "jsonl":
        print(f"copy for {args.reader} ({cases} cases, no key): {args.out}")
    return {"reader": args.reader, "cases": cases}


def cmd_session_verify(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Check a session against its manifest; InputError (exit 2) when anything changed."""
    from ..studies.session import verify_session

    problems = verify_session(args.session)
    reporter.close()
    if problems:
        for problem in problems[1:]:
            print(problem, file=sys.stderr)
        raise InputError(problems[0] + (f" ({len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    if args.progress != "jsonl":
        print(f"{args.session}: intact (every file matches manifest.json)")
    return {"session": args.session, "intact": True}


def cmd_session_analyze(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Statistics of the ratings against the key; writes SESSION/report/report.{md,html}."""
    from ..studies.reader_stats import analyze_session

    summary = analyze_session(args.session, args.margin)
    reporter.close()
    for problem in summary["problems"]:
        print(problem, file=sys.stderr)
    pooled = summary["pooled"]
    acc = pooled["accuracy"]
    if acc["value"] is not None and args.progress != "jsonl":
        print(
            f"pooled accuracy {100 * acc['value']:.1f} % ({acc['k']}/{acc['n']}), "
            f"binomial p vs 50 % {acc['p_value']:.3g}, AUC {number_text(pooled['auc'])}"
        )
    if args.progress != "jsonl":
        print(f"report: {Path(args.session) / 'report' / 'report.html'}")
    return {"pooled_accuracy": acc["value"]}


def add_export(p: argparse.ArgumentParser) -> None:
    from ..studies.export import EXPORT_FORMATS, PHI_OPTIONS

    p.add_argument("case_dir", metavar="CASE_DIR", help="case folder written by advseg attack")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to create (new or empty)")
    p.add_argument(
        "--format",
        nargs="+",
        choices=EXPORT_FORMATS,
        default=["nifti"],
        help="volume formats (default nifti)",
    )
    p.add_argument(
        "--dicom-source",
        metavar="DIR",
        help="DICOM series the case was made from (default: the recorded input)",
    )
    p.add_argument(
        "--phi",
        choices=PHI_OPTIONS,
        default="remove",
        help="patient information in the bundle (default remove)",
    )
    add_common_options(p, device=False)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace, reporter: Reporter) -> dict:
    """`advseg export CASE_DIR --out BUNDLE …`: write a case bundle."""
    from ..studies.export import DICOM_FOLDER, export_case

    manifest = export_case(
        args.case_dir, args.out, args.format, dicom_source=args.dicom_source, phi=args.phi, reporter=reporter
    )
    reporter.close()
    if args.progress != "jsonl":
        dicom = manifest["dicom"]
        extra = f"; DICOM series of {dicom['slices']} slices in {DICOM_FOLDER}/" if dicom else ""
        phi = "PHI removed" if args.phi == "remove" else "PHI kept"
        print(f"bundle with {len(manifest['files'])} files ({phi}{extra}): {args.out}")
    return manifest


PARSERS = {"session": add_session, "export": add_export}
