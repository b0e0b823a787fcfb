"""Dataset runs: attack every case of a split (`advseg attack-dataset`) or score saved adversarial
volumes (`advseg evaluate`), in one process or shared among the ranks of a `torchrun` job.

Output folder layout (`OUT`):

    OUT/run.json                 the settings of the run (a rerun with other settings is refused)
    OUT/cases/<case>/            one folder per case (attack-dataset: what `advseg attack` writes)
    OUT/manifest.rank<R>.jsonl   one JSON line per finished case of rank R (appended, fsynced per line)
    OUT/manifest.jsonl           rank 0's merge: the latest line of every case of the split
    OUT/aggregate.csv, .md       mean ± sd per organ, clean vs attacked Dice and HD95; SSIM, PSNR
    OUT/cases.csv                one row per case × organ: Dice and HD95 clean and attacked, SSIM, PSNR, L∞
    OUT/summary.json             counts and the failed cases with their sentences

Cases are handed out dynamically: every rank takes the next case number from an atomic counter in the
`torch.distributed` store (`store.add`), so a slow case never idles the others. A manifest line is
written only after a case's folder is complete, with the SHA-256 of every file; a rerun skips the cases
whose latest `ok` line still matches the files on disk and redoes all others (failed, missing, changed or
half-written). A failing case (missing file, label on another grid, any exception) gets a `failed` line
with its sentence and the run goes on; the command then exits with status 1.
"""

from __future__ import annotations

import csv
import glob
import io as text_io
import itertools
import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import InputError, describe_error, write_error_log
from ..evaluation.casefolder import ADVERSARIAL, METRICS, PRED_ADV, PRED_CLEAN, CaseFolder, read_case
from ..evaluation.robustness_report import ALL_ORGANS
from ..models.cards import model_inputs
from ..progress import Reporter, SilentReporter
from ..volumes.io import (
    json_safe,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from ..volumes.outputs import Input, claim_output_folder
from .datalist import Case, safe_case_name
from .distributed import DistributedContext, barrier, shared_store

CASES_DIR = "cases"
RUN_FILE = "run.json"
MANIFEST = "manifest.jsonl"
AGGREGATE_CSV = "aggregate.csv"
AGGREGATE_MD = "aggregate.md"
CASES_CSV = "cases.csv"
SUMMARY = "summary.json"
#: Everything a dataset run writes at the top of OUT (glob patterns), for the output-folder check.
DATASET_FILES = (
    RUN_FILE,
    CASES_DIR,
    MANIFEST,
    "manifest.rank*.jsonl",
    AGGREGATE_CSV,
    AGGREGATE_MD,
    CASES_CSV,
    SUMMARY,
)

_run_numbers = itertools.count()  # same sequence on every rank: names the store keys of each run


@dataclass(frozen=True)
class AdversarialCase:
    """A case of `evaluate`: the clean case and its saved adversarial volume (None if not found)."""

    case: Case
    adversarial: Path | None

    @property
    def name(self) -> str:
        return self.case.name

    @property
    def problem(self) -> str | None:
        if self.case.problem:
            return self.case.problem
        if self.adversarial is None:
            return f"case {self.name}: no adversarial volume was found for it."
        if self.adversarial.resolve() == self.case.image.resolve():
            return f"case {self.name}: the adversarial volume found, {self.adversarial}, is the clean image itself."
        return None


@dataclass
class RunSummary:
    """What one dataset run did, over all ranks (the case names and sentences only on rank 0)."""

    total: int  # cases in the split
    ran: int  # cases run now (ok or failed)
    skipped: int  # cases whose earlier outputs checked out
    ok: list[str]  # cases whose latest manifest line is ok
    failed: dict[str, str]  # case -> sentence (rank 0; other ranks: their own)
    failed_total: int

    @property
    def exit_status(self) -> int:
        return 1 if self.failed_total else 0


# --- manifest ---------------------------------------------------------------------------------------------


def manifest_path(out: Path, rank: int) -> Path:
    return out / f"manifest.rank{rank}.jsonl"


class ManifestWriter:
    """Appends one JSON line per case to this rank's manifest; each line is flushed and fsynced."""

    def __init__(self, out: Path, rank: int) -> None:
        path = manifest_path(out, rank)
        self._handle = open(path, "a+b")  # kept open for the whole run
        self._handle.seek(0, os.SEEK_END)
        if self._handle.tell() > 0:  # a line cut short by a crash must not swallow the next one
            self._handle.seek(-1, os.SEEK_END)
            if self._handle.read(1) != b"\n":
                self._handle.write(b"\n")

    def write(self, record: dict) -> None:
        line = json.dumps(json_safe(record), allow_nan=False, sort_keys=True) + "\n"
        self._handle.write(line.encode())
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def read_manifest_lines(out: Path) -> list[dict]:
    """Every complete line of every rank's manifest (a line cut short by a crash is ignored)."""
    records = []
    for path in sorted(out.glob("manifest.rank*.jsonl")):
        for line in path.read_text(errors="replace", encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "case" in record and "finished_at" in record:
                records.append(record)
    return records


def latest_records(records: Sequence[dict]) -> dict[str, dict]:
    """The latest line of each case (by `finished_at`, UTC ISO time)."""
    latest: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: r["finished_at"]):
        latest[record["case"]] = record
    return latest


def hash_outputs(case_dir: Path) -> dict[str, str]:
    """SHA-256 of every (non-hidden) file of a case folder, by file name."""
    return {
        p.name: sha256_file(p)
        for p in sorted(case_dir.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def outputs_check_out(case_dir: Path, record: dict | None, required: Sequence[str]) -> bool:
    """True when `record` is an `ok` line whose files (including every `required` one) match the disk."""
    if not record or record.get("status") != "ok":
        return False
    outputs = record.get("outputs") or {}
    if not set(required) <= set(outputs):
        return False
    for name, digest in outputs.items():
        path = case_dir / name
        if not path.is_file() or sha256_file(path) != digest:
            return False
    return True


# --- metrics of a case and of the dataset -----------------------------------------------------------------


def case_numbers(metrics: dict) -> dict:
    """The numbers of a case's metrics.json that go into the manifest and the aggregate table."""
    perturbation = metrics.get("perturbation") or {}
    return {
        "model": metrics.get("model"),
        "attack": (metrics.get("attack") or {}).get("name"),
        "reference": metrics.get("reference"),
        "organs": {
            name: {
                key: row.get(key)
                for key in ("label", "dice_clean", "dice_adv", "hd95_clean_mm", "hd95_adv_mm")
            }
            for name, row in metrics.get("organs", {}).items()
        },
        **{
            f"mean_{key}{count}": metrics.get(f"mean_{key}{count}")
            for key in ("dice_clean", "dice_adv", "hd95_clean_mm", "hd95_adv_mm")
            for count in ("", "_organs")  # the mean and how many organs it covers
        },
        "ssim_3d": perturbation.get("ssim_3d"),
        "ssim_axial_mean": perturbation.get("ssim_axial_mean"),
        "psnr_db": perturbation.get("psnr_db"),
        "linf_hu": perturbation.get("linf_hu"),
    }


ORGAN_COLUMNS = (
    ("dice_clean", "Dice clean", ""),
    ("dice_adv", "Dice attacked", ""),
    ("hd95_clean_mm", "HD95 clean", "mm"),
    ("hd95_adv_mm", "HD95 attacked", "mm"),
)
CASE_COLUMNS = (
    ("mean_dice_clean", "Dice clean", ""),
    ("mean_dice_adv", "Dice attacked", ""),
    ("mean_hd95_clean_mm", "HD95 clean", "mm"),
    ("mean_hd95_adv_mm", "HD95 attacked", "mm"),
)
PERTURBATION_ROWS = (
    ("ssim_3d", "SSIM 3-D", ""),
    ("ssim_axial_mean", "SSIM axial (mean over slices)", ""),
    ("psnr_db", "PSNR", "dB"),
    ("linf_hu", "L-inf", "HU"),
)
ORGAN_COLUMNS_KEYS = ("label", *(key for key, _, _ in ORGAN_COLUMNS))


def _stats(values: Sequence) -> tuple[int, float, float]:
    """(n, mean, sample sd) over the finite values; NaN mean when none, NaN sd when fewer than two."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return 0, math.nan, math.nan
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    return len(finite), float(np.mean(finite)), sd


def aggregate(numbers: Sequence[dict]) -> list[dict]:
    """Tidy rows {scope, metric, unit, n, mean, sd}: per organ, the per-case organ means, the perturbation.

    Organs come in order of label value; a value that is None/NaN/inf (organ absent from a map, HD95
    of an organ the prediction missed) is left out of its mean, so `n` says how many cases count.
    """
    labels = {name: row.get("label", 0) for case in numbers for name, row in case["organs"].items()}
    organs = sorted(labels, key=lambda name: (labels[name], name))
    rows = []
    for organ in organs:
        for key, _, unit in ORGAN_COLUMNS:
            values = [case["organs"][organ].get(key) for case in numbers if organ in case["organs"]]
            n, mean, sd = _stats(values)
            rows.append({"scope": organ, "metric": key, "unit": unit, "n": n, "mean": mean, "sd": sd})
    for key, _, unit in (*CASE_COLUMNS, *PERTURBATION_ROWS):
        n, mean, sd = _stats([case.get(key) for case in numbers])
        scope = ALL_ORGANS if (key, _, unit) in CASE_COLUMNS else "perturbation"
        rows.append({"scope": scope, "metric": key, "unit": unit, "n": n, "mean": mean, "sd": sd})
    return rows


CASE_ROW_COLUMNS = ("case", "model", "attack")
ORGAN_ROW_COLUMNS = (
    "organ",
    "label",
    "dice_clean",
    "dice_adv",
    "dice_drop",
    "hd95_clean_mm",
    "hd95_adv_mm",
    "ssim_3d",
    "ssim_axial_mean",
    "psnr_db",
    "linf_hu",
)


def case_rows(records: Iterable[dict], **columns: object) -> list[dict]:
    """cases.csv rows of `ok` manifest lines: one per case × organ (Dice, HD95 clean and attacked, the Dice
    drop clean − attacked, and the case's SSIM, PSNR, L∞ in HU); `columns` (e.g. parameter=, value=) are
    added to every row after case, model and attack."""
    rows = []
    for record in records:
        numbers = record["metrics"]
        organs = sorted(numbers["organs"].items(), key=lambda item: (item[1].get("label", 0), item[0]))
        for organ, values in organs:
            clean, adv = values.get("dice_clean"), values.get("dice_adv")
            rows.append(
                {
                    "case": record["case"],
                    "model": numbers.get("model"),
                    "attack": numbers.get("attack"),
                    **columns,
                    "organ": organ,
                    **{key: values.get(key) for key in ORGAN_COLUMNS_KEYS},
                    "dice_drop": None if clean is None or adv is None else clean - adv,
                    **{key: numbers.get(key) for key, _, _ in PERTURBATION_ROWS},
                }
            )
    return rows


def cases_csv(rows: Sequence[dict]) -> str:
    """cases.csv: the rows of `case_rows` (columns in their order; an undefined number is an empty cell)."""
    buffer = text_io.StringIO()
    extra = [key for key in (rows[0] if rows else {}) if key not in (*CASE_ROW_COLUMNS, *ORGAN_ROW_COLUMNS)]
    header = [*CASE_ROW_COLUMNS, *extra, *ORGAN_ROW_COLUMNS]
    writer = csv.DictWriter(buffer, header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                key: "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else value
                for key, value in row.items()
            }
        )
    return buffer.getvalue()


def _number(value: float, digits: int) -> str:
    return "" if not math.isfinite(value) else f"{value:.{digits}f}"


def aggregate_csv(rows: Sequence[dict]) -> str:
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["scope", "metric", "unit", "n", "mean", "sd"])
    for row in rows:
        writer.writerow(
            [
                row["scope"],
                row["metric"],
                row["unit"],
                row["n"],
                _number(row["mean"], 6),
                _number(row["sd"], 6),
            ]
        )
    return buffer.getvalue()


def _mean_sd(row: dict | None, digits: int) -> str:
    if row is None or row["n"] == 0:
        return "–"
    if not math.isfinite(row["sd"]):
        return f"{row['mean']:.{digits}f} (n={row['n']})"
    return f"{row['mean']:.{digits}f} ± {row['sd']:.{digits}f}"


def aggregate_markdown(rows: Sequence[dict], title: str, total: int, ok_cases: int, failed: dict) -> str:
    """The aggregate as Markdown: organ table, perturbation table, failures."""
    by_key = {(r["scope"], r["metric"]): r for r in rows}
    scopes = list(dict.fromkeys(r["scope"] for r in rows if r["scope"] not in (ALL_ORGANS, "perturbation")))
    lines = [
        f"# {title}",
        "",
        f"{ok_cases} of {total} cases scored; mean ± sample sd over cases (n = cases counted"
        " when fewer than all; Dice only where the reference has the organ, HD95 only where both maps have it).",
        "",
        "| organ | cases | Dice clean | Dice attacked | HD95 clean (mm) | HD95 attacked (mm) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for scope, keys in [(s, [k for k, _, _ in ORGAN_COLUMNS]) for s in scopes] + [
        (ALL_ORGANS, [k for k, _, _ in CASE_COLUMNS])
    ]:
        cells = [_mean_sd(by_key.get((scope, k)), 3 if "dice" in k else 1) for k in keys]
        count = by_key[(scope, keys[0])]["n"]
        name = f"**{scope}**" if scope == ALL_ORGANS else scope
        lines.append(f"| {name} | {count} | " + " | ".join(cells) + " |")
    lines += ["", "| perturbation | cases | mean ± sd |", "|---|---:|---:|"]
    for key, label, unit in PERTURBATION_ROWS:
        row = by_key[("perturbation", key)]
        label = f"{label} ({unit})" if unit else label
        lines.append(f"| {label} | {row['n']} | {_mean_sd(row, 4 if 'ssim' in key else 1)} |")
    if failed:
        lines += ["", f"## Failed cases ({len(failed)})", ""]
        lines += [f"- `{name}`: {sentence}" for name, sentence in failed.items()]
    return "\n".join(lines) + "\n"


# --- the run ----------------------------------------------------------------------------------------------


def _check_settings(out: Path, settings: dict, ctx: DistributedContext) -> None:
    """Refuse an OUT folder that holds a run with other settings; rank 0 records them for a new one."""
    path = out / RUN_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = None
        if previous != json_safe(settings):
            raise InputError(
                f"--out {out} holds a run with other settings (see {path}); use another --out, or the same settings."
            )
    elif ctx.is_main:
        write_json_atomic(path, settings)


def _tickets(store, key: str, total: int):
    """Case numbers for this rank: the next free one of the shared counter, until none is left."""
    if store is None:
        yield from range(total)
        return
    while (ticket := store.add(f"{key}/next", 1) - 1) < total:
        yield ticket


def clear_case_dir(cases_dir: Path, name: str) -> Path:
    """Remove a case's earlier (unverified) folder and any staging folder a killed run left behind.

    Only ever `cases_dir/<name>` and `cases_dir/.<name>.staging-*` for a safe (non-empty, one-component) name.
    """
    case_dir = cases_dir / name
    if not safe_case_name(name) or case_dir.parent != cases_dir:
        raise InputError(f"case name {name!r} is not a safe folder name; nothing was deleted.")
    for stale in cases_dir.glob(f".{glob.escape(name)}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if case_dir.exists():
        shutil.rmtree(case_dir)
    return case_dir


def run_cases(
    cases: Sequence,
    out: Path,
    run_case: Callable[[object, Path], dict],
    required: Sequence[str],
    settings: dict,
    ctx: DistributedContext,
    reporter: Reporter,
) -> RunSummary:
    """Run `run_case(case, case_dir) -> metrics` for every case not already done, shared among ranks.

    `cases` have `.name` and `.problem` (a sentence when the case cannot run). `required` are the file
    names every finished case folder has. Rank 0 merges the manifests and writes the aggregate.
    """
    out = Path(out)
    cases_dir = out / CASES_DIR
    cases_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings, ctx)
    previous = latest_records(read_manifest_lines(out))
    barrier(ctx)  # every rank has read the old manifests before any rank appends to them
    if not (out / RUN_FILE).is_file():  # rank 0 wrote it before the barrier
        raise InputError(
            f"--out {out} is not on a file system shared by all ranks (rank {ctx.rank} on {socket.gethostname()}"
            f" does not see {RUN_FILE} that rank 0 wrote); use a shared folder."
        )

    store = shared_store(ctx)
    key = f"advseg/{settings['kind']}/{next(_run_numbers)}"
    writer = ManifestWriter(out, ctx.rank)
    host = socket.gethostname()
    ran: list[str] = []
    skipped: list[str] = []
    failed: dict[str, str] = {}
    try:
        for ticket in _tickets(store, key, len(cases)):
            case = cases[ticket]
            case_dir = cases_dir / case.name
            if outputs_check_out(case_dir, previous.get(case.name), required):
                skipped.append(case.name)
            else:
                started = time.perf_counter()
                record = {"case": case.name, "rank": ctx.rank, "host": host}
                try:
                    if case.problem:
                        raise InputError(case.problem)
                    case_dir = clear_case_dir(cases_dir, case.name)
                    metrics = run_case(case, case_dir)
                    record.update(status="ok", error=None, metrics=case_numbers(metrics))
                    record["outputs"] = hash_outputs(case_dir)
                except Exception as error:  # a case that fails must not stop the others
                    sentence = str(error) if isinstance(error, InputError) else describe_error(error)
                    log = (
                        None if isinstance(error, InputError) else write_error_log(error, " ".join(sys.argv))
                    )
                    where = f" (traceback in {log})" if log else ""
                    print(f"advseg: case {case.name} failed: {sentence}{where}", file=sys.stderr)
                    record.update(status="failed", error=sentence, metrics=None, outputs={})
                    failed[case.name] = sentence
                ran.append(case.name)
                record["seconds"] = round(time.perf_counter() - started, 3)
                record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="microseconds")
                writer.write(record)
            finished = store.add(f"{key}/finished", 1) if store is not None else len(ran) + len(skipped)
            reporter.progress("cases", int(finished), len(cases))
    finally:
        writer.close()
    counts = {"ran": len(ran), "skipped": len(skipped), "failed": len(failed)}
    if store is not None:
        for name, value in counts.items():
            store.add(f"{key}/{name}", value)
    barrier(ctx)  # every rank's manifest lines are on disk and its counts in the store
    if store is not None:
        counts = {name: store.add(f"{key}/{name}", 0) for name in counts}
    if ctx.is_main:
        ok, failed = _merge(out, cases, settings, counts)
    else:
        ok = []
    summary = RunSummary(len(cases), counts["ran"], counts["skipped"], ok, failed, len(failed))
    if store is not None:  # every rank learns the outcome, so all exit with the same status
        if ctx.is_main:
            store.set(f"{key}/failed_total", str(len(failed)))
        barrier(ctx)
        summary.failed_total = int(store.get(f"{key}/failed_total").decode())
    return summary


def _merge(out: Path, cases: Sequence, settings: dict, counts: dict) -> tuple[list[str], dict[str, str]]:
    """Rank 0: one manifest line per case, the aggregate tables and the summary; returns (ok, failed)."""
    latest = latest_records(read_manifest_lines(out))
    merged = [latest[c.name] for c in cases if c.name in latest]
    write_text_atomic(
        out / MANIFEST, "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in merged)
    )
    ok = [r for r in merged if r["status"] == "ok"]
    failed = {r["case"]: r["error"] for r in merged if r["status"] != "ok"}
    for case in cases:
        if case.name not in latest:
            failed[case.name] = (
                f"case {case.name} has no manifest line (its rank stopped before finishing it)."
            )
    rows = aggregate([r["metrics"] for r in ok])
    write_text_atomic(out / AGGREGATE_CSV, aggregate_csv(rows))
    title = settings.get("title", settings["kind"])
    write_text_atomic(out / AGGREGATE_MD, aggregate_markdown(rows, title, len(cases), len(ok), failed))
    write_text_atomic(out / CASES_CSV, cases_csv(case_rows(ok)))
    write_json_atomic(
        out / SUMMARY,
        {
            "cases": len(cases),
            "ok": len(ok),
            "ran_now": counts["ran"],
            "skipped_now": counts["skipped"],
            "failed": [{"case": name, "error": sentence} for name, sentence in failed.items()],
            "settings": settings,
            "written_at": datetime.now(timezone.utc).isoformat(),
        },
    )
    return [r["case"] for r in ok], failed


# --- attack-dataset ---------------------------------------------------------------------------------------


def case_inputs(cases: Iterable) -> list[Input]:
    """(path, what) of every file the cases read (image, label; evaluate: the adversarial volume)."""
    inputs: list[Input] = []
    for item in cases:
        case = getattr(item, "case", item)
        inputs += [(case.image, f"the image of case {case.name}")]
        inputs += [(case.label, f"the label of case {case.name}")] if case.label else []
        adversarial = getattr(item, "adversarial", None)
        inputs += [(adversarial, f"the adversarial volume of case {case.name}")] if adversarial else []
    return inputs


def attack_dataset(
    cases: Sequence[Case],
    template,
    out: Path,
    ctx: DistributedContext,
    reporter: Reporter,
    inputs: Sequence[Input] = (),
    model=None,
) -> RunSummary:
    """Attack every case with the settings of `template` (a `pipeline.AttackRequest`; its image, label and
    out are replaced per case) and write the dataset folder `out`.

    The settings are validated once, before any case runs and before `out` is claimed (see `outputs`);
    `inputs` are further files the run reads (the datalist), so that `out` never overwrites them. `model`:
    the template's model (a `pipeline.case.LoadedModel`) when the caller has loaded it already (a sweep).
    """
    from ..pipeline.case import LoadedModel, prepare_attack, run_attack

    if model is None:
        model = LoadedModel.for_request(template)  # once for every case
    card = model.card
    attack, _ = prepare_attack(template, card)  # bad parameters, unknown organs: exit 2 now
    settings = {
        "kind": "attack-dataset",
        "title": f"{attack.name} against {card.name}",
        "model": _source_name(template.model),
        "card": _source_name(template.card) if template.card else None,
        "attack": attack.name,
        "preset": template.preset,
        "parameters": attack.config.to_dict(),
        "organs": list(template.organs),
        "region": template.region,
        "dilation_mm": template.dilation_mm,
        "targeted": template.targeted,
        "seed": template.seed,
        "preview": template.preview,
        **nnunet_settings(card),
    }
    inner = reporter if ctx.is_main else SilentReporter()

    def run_one(case: Case, case_dir: Path) -> dict:
        request = replace(template, image=case.image, label=case.label, out=case_dir)
        return run_attack(request, inner, model)

    required = [p.name for p in CaseFolder(Path(".")).required()]
    inputs = [
        *inputs,
        *case_inputs(cases),
        *model_inputs(template.model),
        *model_inputs(template.card, "--card"),
    ]
    with claim_output_folder(out, inputs, DATASET_FILES, ctx=ctx):
        return run_cases(cases, Path(out), run_one, required, settings, ctx, reporter)


def nnunet_settings(card) -> dict:
    """{"nnunet": the configuration, folds, checkpoints and tta an nnU-Net model was loaded with (its defaults
    resolved)} for a run's settings, so that a rerun with other choices is refused; {} for other models."""
    if not card.nnunet:
        return {}
    return {"nnunet": {key: card.nnunet[key] for key in ("configuration", "folds", "checkpoints", "tta")}}


def _source_name(source: str | Path) -> str:
    """A model given as a path is recorded absolute (a rerun from another folder is the same run)."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else str(source)


# --- evaluate ---------------------------------------------------------------------------------------------

ADVERSARIAL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def find_adversarial(adv_dir: Path, case: Case) -> Path | None:
    """The saved adversarial volume of `case` in `adv_dir`: an attack-dataset folder (`cases/<name>/`),
    a folder of case folders (`<name>/`), or a flat folder of volumes named as the image or `<name>.<suffix>`.
    """
    candidates = [
        adv_dir / CASES_DIR / case.name / ADVERSARIAL,
        adv_dir / case.name / ADVERSARIAL,
        adv_dir / case.image.name,
        *(adv_dir / f"{case.name}{suffix}" for suffix in ADVERSARIAL_SUFFIXES),
    ]
    return next((p for p in candidates if p.is_file()), None)


def cases_from_case_folders(adv_dir: Path) -> list[AdversarialCase]:
    """Evaluate cases from the case folders in `adv_dir` (or `adv_dir/cases`): input and label from provenance."""
    root = adv_dir / CASES_DIR if (adv_dir / CASES_DIR).is_dir() else adv_dir
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    folders = [p for p in folders if (p / "provenance.json").is_file()]
    if not folders:
        raise InputError(
            f"--adv-dir {adv_dir} holds no case folders (with provenance.json); give --datalist or --data-dir"
            " to match a flat folder of adversarial volumes."
        )
    out = []
    for folder in folders:
        try:
            provenance = read_case(folder).load_provenance()
            image = Path(provenance["input"]["path"])
            label = (provenance.get("reference_label") or {}).get("path")
            problem = None
        except (InputError, KeyError, json.JSONDecodeError) as error:
            image, label, problem = folder, None, f"case folder {folder} cannot be read ({error})."
        label_path = Path(label) if label else None
        if problem is None and not image.exists():
            problem = f"case {folder.name}: its input {image} (from provenance.json) does not exist."
        elif problem is None and label_path is not None and not label_path.exists():
            problem = f"case {folder.name}: its label {label_path} (from provenance.json) does not exist."
        case = Case(folder.name, image, label_path, problem)
        out.append(AdversarialCase(case, folder / ADVERSARIAL))
    return out


def evaluate_dataset(
    cases: Sequence[AdversarialCase],
    model: str,
    card_source: str | None,
    out: Path,
    ctx: DistributedContext,
    device,
    reporter: Reporter,
    sw_batch_size: int = 4,
    adv_dir: Path | None = None,
    inputs: Sequence[Input] = (),
    trust_torchscript: bool = False,
    nnunet: dict | None = None,
    loaded=None,
) -> RunSummary:
    """Segment every clean and saved adversarial volume with the model; score them like `attack` does.

    `out` is claimed (see `outputs`) after the model loads; it never overwrites `adv_dir`, the cases' files
    or further `inputs` (the datalist). `loaded`: the model (a `pipeline.case.LoadedModel`) when the caller
    has loaded it already (a transfer matrix).
    """
    from ..pipeline.case import LoadedModel, evaluate_case

    if loaded is None:
        loaded = LoadedModel.load(
            model, card_source, device, sw_batch_size, trust_torchscript, nnunet
        )  # once
    adv_name = str(Path(adv_dir).resolve()) if adv_dir else None
    settings = {
        "kind": "evaluate",
        "title": f"{loaded.card.name} on the adversarial volumes of {adv_name}",
        "model": _source_name(model),
        "card": _source_name(card_source) if card_source else None,
        "adv_dir": adv_name,
        **nnunet_settings(loaded.card),
    }
    inner = reporter if ctx.is_main else SilentReporter()

    def run_one(item: AdversarialCase, case_dir: Path) -> dict:
        case = item.case
        attack = adversarial_attack_name(item.adversarial)
        return evaluate_case(
            loaded, case.image, item.adversarial, case.label, case_dir, inner, item.name, attack
        )

    required = [f"{PRED_CLEAN}.nii.gz", f"{PRED_ADV}.nii.gz", METRICS]
    inputs = [*inputs, *case_inputs(cases), *model_inputs(model), *model_inputs(card_source, "--card")]
    if adv_dir is not None:
        inputs.append((adv_dir, "--adv-dir"))
    with claim_output_folder(out, inputs, DATASET_FILES, ctx=ctx):
        return run_cases(cases, Path(out), run_one, required, settings, ctx, reporter)


def adversarial_attack_name(adversarial: Path) -> str | None:
    """The attack that made an adversarial volume, from the provenance.json of its case folder (None when it
    is not in a readable case folder)."""
    try:
        return read_case(adversarial.parent).load_provenance()["attack"]["name"]
    except (InputError, KeyError, TypeError, json.JSONDecodeError):
        return None


def match_adversarial(cases: Sequence[Case], adv_dir: Path) -> list[AdversarialCase]:
    """Pair every datalist case with its saved adversarial volume in `adv_dir` (None when there is none)."""
    return [AdversarialCase(case, find_adversarial(adv_dir, case)) for case in cases]
