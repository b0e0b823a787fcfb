"""Transfer matrices (`advseg transfer`): adversarial volumes crafted on each source model, scored on every
target model — white-box on the diagonal (source = target), black-box off it.

Every model is loaded once. Each source model attacks the cases once, as a dataset run in
`OUT/attacks/<source>/` (case folders with `adversarial.nii.gz`, resumable); each (source, target) pair is then
an `evaluate` run in `OUT/scores/<source>--on--<target>/` that segments the *written* adversarial volumes and
their clean images with the target model (never attacking again). Then, in `OUT`:

    transfer.json  the settings: attack and every parameter, source and target models, organs, seed, the cases
    transfer.csv   one row per (source, target): box (white/black), cases, mean organ Dice clean and attacked
                   and the drop (mean and sd over cases), SSIM 3-D and L∞ (HU) of the volumes
    cases.csv      one row per case × organ × (source, target) (`runs.case_rows` with `source_model`)
    transfer.png   heat maps source × target of the attacked Dice and of the Dice drop
    report.html    the self-contained report (`evaluation.robustness_report`)
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..evaluation.robustness_report import (
    TRANSFER_CSV,
    TRANSFER_SETTINGS,
    read_csv,
    write_report,
    write_transfer_plot,
)
from ..progress import Reporter
from ..volumes.io import write_json_atomic, write_text_atomic
from ..volumes.outputs import Input, claim_output_folder
from .datalist import Case
from .distributed import DistributedContext
from .runs import (
    CASES_CSV,
    RunSummary,
    attack_dataset,
    case_rows,
    cases_csv,
    evaluate_dataset,
    match_adversarial,
    nnunet_settings,
)
from .sweep import ok_records

ATTACKS_DIR, SCORES_DIR = "attacks", "scores"
TRANSFER_FILES = (
    TRANSFER_SETTINGS,
    ATTACKS_DIR,
    SCORES_DIR,
    TRANSFER_CSV,
    CASES_CSV,
    "transfer.png",
    "report.html",
)
TRANSFER_COLUMNS = (
    "source_model",
    "target_model",
    "box",
    "cases",
    "dice_clean",
    "dice_clean_sd",
    "dice_adv",
    "dice_adv_sd",
    "dice_drop",
    "dice_drop_sd",
    "ssim_3d",
    "linf_hu",
)


def model_folder_name(name: str) -> str:
    """A model's card name as one portable path component: characters other than letters, digits, ".", "_"
    and "-" become "_" (an nnU-Net card name such as `nnunet:Dataset297_X/nnUNetTrainer__nnUNetPlans__3d_fullres`
    holds ":" and "/")."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "model"


def pair_folder(source: str, target: str) -> str:
    """The evaluate run folder of one (source, target) pair of card names."""
    return f"{model_folder_name(source)}--on--{model_folder_name(target)}"


def _mean_sd(values: Sequence[float | None]) -> tuple[float, float]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan


def transfer_row(source: str, target: str, records: Sequence[dict]) -> dict:
    """The transfer.csv row of one pair from its evaluate run's `ok` manifest lines."""
    numbers = [r["metrics"] for r in records]
    clean = [n.get("mean_dice_clean") for n in numbers]
    adv = [n.get("mean_dice_adv") for n in numbers]
    drop = [c - a if c is not None and a is not None else None for c, a in zip(clean, adv, strict=True)]
    row = {"source_model": source, "target_model": target, "box": "white" if source == target else "black"}
    row["cases"] = len(numbers)
    for key, values in (("dice_clean", clean), ("dice_adv", adv), ("dice_drop", drop)):
        row[key], row[f"{key}_sd"] = _mean_sd(values)
    row["ssim_3d"] = _mean_sd([n.get("ssim_3d") for n in numbers])[0]
    row["linf_hu"] = _mean_sd([n.get("linf_hu") for n in numbers])[0]
    return row


def transfer_csv(rows: Sequence[dict]) -> str:
    """transfer.csv (an undefined number is an empty cell)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, TRANSFER_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: ""
                if isinstance(v, float) and not math.isfinite(v)
                else (f"{v:.6f}" if isinstance(v, float) else v)
                for k, v in row.items()
            }
        )
    return buffer.getvalue()


@dataclass
class TransferSummary:
    """What a transfer run did: the attack run of each source and the evaluate run of each pair."""

    attacks: dict[str, RunSummary]
    scores: dict[tuple[str, str], RunSummary]

    @property
    def exit_status(self) -> int:
        runs = [*self.attacks.values(), *self.scores.values()]
        return max((run.exit_status for run in runs), default=0)


def run_transfer(
    cases: Sequence[Case],
    template,
    source_models: Sequence[str],
    target_models: Sequence[str],
    out: Path,
    ctx: DistributedContext,
    reporter: Reporter,
    inputs: Sequence[Input] = (),
) -> TransferSummary:
    """Attack the cases with every source model and score the written volumes with every target model;
    write the transfer folder `out` (see the module docstring). `template` is a `pipeline.AttackRequest` as
    for `runs.attack_dataset` (its model is replaced by each source)."""
    from ..models.cards import model_inputs
    from ..models.nnunet import is_results_folder
    from ..pipeline.case import LoadedModel, prepare_attack, run_provenance

    if not source_models or not target_models:
        raise InputError("--source-models and --target-models each need at least one model.")
    loaded: dict[str, LoadedModel] = {}
    requests = {  # the nnU-Net choices go to each nnU-Net results folder among the models
        source: replace(
            template, model=source, card=None, nnunet=template.nnunet if is_results_folder(source) else None
        )
        for source in dict.fromkeys([*source_models, *target_models])
    }
    for source, request in requests.items():
        loaded[source] = LoadedModel.for_request(request)
    names = {source: model.card.name for source, model in loaded.items()}
    if len({model_folder_name(name) for name in names.values()}) != len(names):  # their folders too
        raise InputError(
            "two of the --source-models/--target-models have the same card name (or names that differ only in "
            "characters a folder name cannot hold); give each model once."
        )
    # each model's request is validated once (the organs exist in every model); the attack is the same for all
    prepared = {source: prepare_attack(request, loaded[source].card) for source, request in requests.items()}
    attack, _ = prepared[source_models[0]]
    out = Path(out)
    sources, targets = [names[s] for s in source_models], [names[t] for t in target_models]
    settings = {
        "kind": "transfer",
        "title": f"{attack.name} crafted on {', '.join(sources)}, scored on {', '.join(targets)}",
        "attack": attack.name,
        "preset": template.preset,
        "parameters": attack.config.to_dict(),
        "source_models": sources,
        "target_models": targets,
        "organs": list(template.organs),
        "region": template.region,
        "targeted": template.targeted,
        "seed": template.seed,
        "cases": [case.name for case in cases],
    }
    nnunet = {names[s]: nnunet_settings(m.card)["nnunet"] for s, m in loaded.items() if m.card.nnunet}
    if nnunet:  # only then, so that the transfer folders of other models still resume
        settings["nnunet"] = nnunet
    model_files = [item for source in loaded for item in model_inputs(source)]
    attacks: dict[str, RunSummary] = {}
    scores: dict[tuple[str, str], RunSummary] = {}
    with claim_output_folder(out, [*inputs, *model_files], TRANSFER_FILES, ctx=ctx):
        for source in source_models:
            request = requests[source]
            attack_dir = out / ATTACKS_DIR / model_folder_name(names[source])
            attacks[names[source]] = attack_dataset(
                cases, request, attack_dir, ctx, reporter, inputs, model=loaded[source]
            )
        for source in source_models:
            attack_dir = out / ATTACKS_DIR / model_folder_name(names[source])
            adversarial = match_adversarial(cases, attack_dir)
            for target in target_models:
                pair = (names[source], names[target])
                scores[pair] = evaluate_dataset(
                    adversarial,
                    target,
                    None,
                    out / SCORES_DIR / pair_folder(*pair),
                    ctx,
                    template.device,
                    reporter,
                    template.sw_batch_size,
                    attack_dir,
                    inputs,
                    loaded=loaded[target],
                )
        if ctx.is_main:
            rows, case_table = [], []
            for source in sources:
                for target in targets:
                    records = ok_records(out / SCORES_DIR / pair_folder(source, target))
                    rows.append(transfer_row(source, target, records))
                    case_table += case_rows(records, source_model=source)
            settings["provenance"] = run_provenance(template, {s: m.card for s, m in loaded.items()})
            write_json_atomic(out / TRANSFER_SETTINGS, settings)
            write_text_atomic(out / TRANSFER_CSV, transfer_csv(rows))
            write_text_atomic(out / CASES_CSV, cases_csv(case_table))
            write_transfer_plot(out, read_csv(out / TRANSFER_CSV), settings["title"])
            write_report(out)
    return TransferSummary(attacks, scores)
