"""A sweep's one table: per method and setting, each evaluation's mean +- std over the runs (seeds and splits),
on ``fastlt compare``'s columns, and the training plots of all runs.

The table is rebuilt from the runs' reports (their eval.json) every time, so it always says what is on disk.
"""
from __future__ import annotations

from pathlib import Path

from fastlt.evaluate.compare import Comparison, Row, compare_runs, write_comparison
from fastlt.evaluate.plots import PlotResult, plot_runs
from fastlt.evaluate.report import summarise_subsets
from fastlt.sweep.plan import SweepPlan
from fastlt.sweep.state import run_dir_of

TABLE_LABELS = ("method", "setting", "protocol", "evaluation", "runs", "epoch")
TABLE_CAPTION = ("Test accuracy in percent, mean +- std (ddof 0) over the runs of each row: its seeds and splits. "
                 "many / medium / few: mean per-class accuracy over each group of classes; group std: the std of "
                 "the three. N-shot: each run's mean over its probe subsets, then mean +- std over the runs.")
TABLE_MD, TABLE_CSV, PLOTS_FOLDER = "table.md", "table.csv", "plots"


def sweep_table(sweep_dir: Path, plan: SweepPlan, names: list[str]) -> Comparison:
    """The rows of the finished runs ``names``: one per (method, setting, protocol, evaluation)."""
    point_of = {str(run_dir_of(sweep_dir, p.name)): p for p in plan.points if p.name in names}
    comparison = compare_runs([Path(run) for run in point_of])
    groups: dict[tuple, list[Row]] = {}
    for row in comparison.rows:
        point = point_of[row.labels["run"]]
        key = (point.labels["method"], point.labels["setting"], row.labels["protocol"], row.labels["evaluation"])
        groups.setdefault(key, []).append(row)
    rows = []
    for (method, setting, protocol, evaluation), members in groups.items():
        epochs = sorted({str(row.labels["epoch"]) for row in members})
        labels = {"method": method, "setting": setting, "protocol": protocol, "evaluation": evaluation,
                  "runs": str(len(members)), "epoch": ", ".join(epochs)}
        full = [row.full for row in members if row.full is not None]
        few = {shots: [row.few_shot[shots] for row in members if shots in row.few_shot] for shots in comparison.shots}
        rows.append(Row(labels, _over_runs(full), {shots: _over_runs(reports) for shots, reports in few.items()
                                                   if reports}))
    return Comparison(rows, comparison.shots, comparison.left_out, TABLE_LABELS, TABLE_CAPTION)


def _over_runs(reports: list[dict]) -> dict | None:
    """Several runs' reports as one: mean +- std of each measure; a single run's values alone (a std over one run
    says nothing, and its few-shot spread over probe subsets is not a spread over runs)."""
    if len(reports) < 2:
        return {key: value for key, value in reports[0].items() if key != "std_over_subsets"} if reports else None
    return summarise_subsets(reports)


def write_sweep_table(sweep_dir: Path, plan: SweepPlan, names: list[str]) -> tuple[list[Path], PlotResult]:
    """table.md, table.csv and plots/ in the sweep folder, from the finished runs ``names``: the table's files,
    and the plots (which a reproduction links from its own table)."""
    sweep_dir = Path(sweep_dir)
    written = write_comparison(sweep_table(sweep_dir, plan, names), sweep_dir / TABLE_CSV, sweep_dir / TABLE_MD)
    return written, plot_runs([run_dir_of(sweep_dir, name) for name in names], sweep_dir / PLOTS_FOLDER,
                              overwrite=True)


