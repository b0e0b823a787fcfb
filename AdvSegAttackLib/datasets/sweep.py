"""Budget sweeps (`advseg sweep`): one attack at several values of one numeric parameter, on one volume or on
every case of a dataset split, with the model loaded once.

Each value is a dataset run of its own (`runs.attack_dataset`, so resumable case by case, and refused when
rerun with other settings) in `OUT/runs/<parameter>-<value>/`; a single `--image` is a dataset of one case.
Then, in `OUT`:

    sweep.json    the settings: attack, parameter and its unit, values, model, organs, region, seed, the cases
    sweep.csv     `parameter, value, scope, metric, unit, n, mean, sd`: each value's aggregate (per organ Dice
                  and HD95 clean and attacked, the mean over organs, SSIM, PSNR, L∞ in HU; mean ± sd over cases)
    cases.csv     one row per case × organ × value (`runs.case_rows` with `parameter`, `value`)
    sweep.png     Dice vs the parameter per organ, the mean bold (± sd bands over cases), and Dice vs SSIM
    report.html   the self-contained report (`evaluation.robustness_report`)

A rerun with more values reuses the finished ones; the tables cover the values of the latest run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..attacks.catalogue import attack_config, attack_entry
from ..errors import InputError
from ..evaluation.robustness_report import (
    SWEEP_CSV,
    SWEEP_SETTINGS,
    read_csv,
    write_report,
    write_sweep_plot,
)
from ..progress import Reporter
from ..volumes.io import write_json_atomic, write_text_atomic
from ..volumes.outputs import Input, claim_output_folder
from .datalist import Case
from .distributed import DistributedContext
from .runs import (
    CASES_CSV,
    RunSummary,
    aggregate,
    aggregate_csv,
    attack_dataset,
    case_rows,
    cases_csv,
    latest_records,
    nnunet_settings,
    read_manifest_lines,
)

RUNS_DIR = "runs"
SWEEP_FILES = (SWEEP_SETTINGS, RUNS_DIR, SWEEP_CSV, CASES_CSV, "sweep.png", "report.html")


def sweep_values(
    attack: str, parameter: str, values: Sequence[float | int | str], preset: str | None = None
) -> list[float | int]:
    """The values of a sweep, each checked against the parameter's type and range (InputError naming
    --param): `parameter` must be a numeric parameter of `attack`; values may be given as text ("4")."""
    entry = attack_entry(attack)
    numeric = [p.name for p in entry.parameters if p.type in ("int", "float")]
    if parameter not in numeric:
        raise InputError(
            f"--param {parameter} is not a numeric parameter of --attack {attack} "
            f"({', '.join(numeric) or 'it has none'})."
        )
    if not values:
        raise InputError(f"--param {parameter}= needs at least one value.")
    definition = entry.parameter(parameter)
    checked: list[float | int] = []
    for value in values:
        try:
            parsed = definition.parse(value) if isinstance(value, str) else value
        except ValueError:
            raise InputError(
                f"--param {parameter}: {value!r} is not {'an integer' if definition.type == 'int' else 'a number'}."
            ) from None
        checked.append(getattr(attack_config(attack, preset, **{parameter: parsed}), parameter))
    if len(set(checked)) != len(checked):
        raise InputError(f"--param {parameter} lists a value twice.")
    return checked


def parse_param(text: str) -> tuple[str, list[str]]:
    """`eps=1,2,4,8` -> ("eps", ["1", "2", "4", "8"]); a dashed name (`block-size`) is the catalogue's name."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise InputError(f"--param {text!r} must be NAME=V1,V2,... (e.g. eps=1,2,4,8).")
    return name.strip().replace("-", "_"), [v.strip() for v in values.split(",") if v.strip()]


def value_folder(parameter: str, value: float | int) -> str:
    """The run folder name of one value: `eps-4`, `rho-0.25`."""
    return f"{parameter}-{value:g}"


@dataclass
class SweepSummary:
    """What a sweep did: the dataset run of each value."""

    runs: dict[float | int, RunSummary]

    @property
    def exit_status(self) -> int:
        return max((run.exit_status for run in self.runs.values()), default=0)


def ok_records(run_dir: Path) -> list[dict]:
    """The latest `ok` manifest line of every case of a dataset run folder."""
    return [r for r in latest_records(read_manifest_lines(run_dir)).values() if r["status"] == "ok"]


def sweep_rows(parameter: str, values: Sequence, out: Path) -> tuple[list[dict], list[dict]]:
    """(sweep.csv rows, cases.csv rows) of the value runs in `out/runs`."""
    table, cases = [], []
    for value in values:
        records = ok_records(out / RUNS_DIR / value_folder(parameter, value))
        table += [
            {"parameter": parameter, "value": value, **row}
            for row in aggregate([r["metrics"] for r in records])
        ]
        cases += case_rows(records, parameter=parameter, value=value)
    return table, cases


def sweep_csv(rows: Sequence[dict]) -> str:
    """sweep.csv: the value's aggregate rows (see `runs.aggregate_csv`) behind parameter and value."""
    lines = aggregate_csv(rows).splitlines()
    out = ["parameter,value," + lines[0]]
    out += [f"{row['parameter']},{row['value']:g},{line}" for row, line in zip(rows, lines[1:], strict=True)]
    return "\n".join(out) + "\n"


def run_sweep(
    cases: Sequence[Case],
    template,
    parameter: str,
    values: Sequence[float | int],
    out: Path,
    ctx: DistributedContext,
    reporter: Reporter,
    inputs: Sequence[Input] = (),
) -> SweepSummary:
    """Attack every case at every value of `parameter` (the template's other settings fixed) and write the
    sweep folder `out` (see the module docstring). `template` is a `pipeline.AttackRequest` as for
    `runs.attack_dataset`; the values are checked first (`sweep_values`)."""
    from ..pipeline.case import LoadedModel, prepare_attack, run_provenance

    values = sweep_values(template.attack, parameter, values, template.preset)
    model = LoadedModel.for_request(template)  # once for every value and case
    attack, _ = prepare_attack(template, model.card)
    unit = attack_entry(attack.name).parameter(parameter).unit
    out = Path(out)
    settings = {
        "kind": "sweep",
        "title": f"{attack.name} against {model.card.name}: {parameter} = {', '.join(f'{v:g}' for v in values)}",
        "attack": attack.name,
        "preset": template.preset,
        "parameter": parameter,
        "unit": unit,
        "values": list(values),
        "parameters": {k: v for k, v in attack.config.to_dict().items() if k != parameter},
        "model": model.card.name,
        **nnunet_settings(model.card),
        "organs": list(template.organs),
        "region": template.region,
        "targeted": template.targeted,
        "seed": template.seed,
        "cases": [case.name for case in cases],
    }
    runs: dict[float | int, RunSummary] = {}
    with claim_output_folder(out, inputs, SWEEP_FILES, ctx=ctx):
        for value in values:
            params = {**template.params, parameter: value}
            request = replace(template, params=params)
            run_dir = out / RUNS_DIR / value_folder(parameter, value)
            runs[value] = attack_dataset(cases, request, run_dir, ctx, reporter, inputs, model=model)
        if ctx.is_main:
            table, case_table = sweep_rows(parameter, values, out)
            settings["provenance"] = run_provenance(template, {template.model: model.card})
            write_json_atomic(out / SWEEP_SETTINGS, settings)
            write_text_atomic(out / SWEEP_CSV, sweep_csv(table))
            write_text_atomic(out / CASES_CSV, cases_csv(case_table))
            write_sweep_plot(out, read_csv(out / SWEEP_CSV), parameter, unit, settings["title"])
            write_report(out)
    return SweepSummary(runs)
