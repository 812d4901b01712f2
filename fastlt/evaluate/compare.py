"""Several runs' evaluation reports in one table, so methods are compared on the same columns.

Each ``fastlt linear-eval`` report folder (``eval.json``, written by report.write_report) holds
one evaluation: one protocol on one probe list, with rows such as "linear", "knn@10",
"random-init linear" or, for an N-shot evaluation, "linear, 100-shot" (mean and std over
the probe subsets). ``fastlt compare`` lays them out as the papers' tables do: one row per run
and evaluation with the full-shot overall, many / medium / few and group std, and one column
per few-shot setting (its overall accuracy, mean +- std over the subsets) beside the matching
full-shot row of the same checkpoint, protocol and exit.

What a RUN argument means (``find_reports``):
- an ``eval.json`` file, or a report folder holding one: that report;
- a run folder: every report folder in ``RUN/eval/``. linear-eval names a folder after what it
  measured (protocol, probe list, checkpoint, exit) and replaces it on ``--overwrite``, so each
  folder is the latest report of its kind and none is left out;
- any other folder of report folders (``RUN/eval`` itself, or a ``linear-eval --out`` folder): all of them;
- a folder of runs (none of the above, with subfolders: ``runs/``): each subfolder as a RUN of its own.
Folders whose name starts with "." (reports still being written) are never read. A run without reports is
left out (``Comparison.left_out`` says which and why), so ``fastlt compare runs/*`` compares the runs
evaluated so far; only when nothing has a report is it an error.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from fastlt.errors import FastltError
from fastlt.files import write_text_atomic

REPORT_FILE = "eval.json"
FULL = "full"
ACCURACY_COLUMNS = ("overall", "many", "medium", "few", "group_std")  # the full-shot columns, in percent
LABEL_COLUMNS = ("run", "method", "split", "epoch", "protocol", "evaluation")
NO_REPORTS = "no evaluation reports; run `fastlt linear-eval` on it first"
NOT_A_RUN = "not a run folder, a report folder, a folder of runs or an eval.json (no eval.json found)"
CAPTION = ("Test accuracy in percent. many / medium / few: mean per-class accuracy over each group of classes; "
           "group std: the std of the three (the SDCLR and BCL tables' Std). N-shot: overall accuracy, "
           "mean +- std over the probe subsets.")


@dataclass(frozen=True)
class Report:
    """One eval.json's contents and the name of the run it belongs to, as the table shows it."""

    run: str
    document: dict[str, Any]


@dataclass
class Row:
    """One run's evaluation (e.g. its linear probe): the full-shot report and the few-shot summaries by shots."""

    labels: dict[str, Any]
    full: dict[str, Any] | None = None
    few_shot: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """The table's rows and its few-shot settings (column order), ready for Markdown or CSV."""

    rows: list[Row]
    shots: list[str]
    left_out: dict[str, str] = field(default_factory=dict)  # a RUN without reports, and why
    label_columns: tuple[str, ...] = LABEL_COLUMNS  # what tells the rows apart (a sweep's table has its own)
    caption: str = CAPTION

    def left_out_line(self) -> str | None:
        """One line naming the runs left out and why, or None when none was."""
        return f"left out: {_grouped_by_reason(self.left_out)}" if self.left_out else None

    def markdown(self) -> str:
        """A Markdown table (values to 2 decimals, "-" where a report lacks one) and its caption."""
        labels = self.label_columns
        header = [*labels, *(c.replace("_", " ") for c in ACCURACY_COLUMNS), *(f"{s}-shot" for s in self.shots)]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(labels) + "---:|" * (len(header) - len(labels))]
        for row in self.rows:
            cells = ["-" if row.labels[c] is None else str(row.labels[c]) for c in labels]
            cells += [_formatted(*_measure(row.full, c)) for c in ACCURACY_COLUMNS]
            cells += [_formatted(*_measure(row.few_shot.get(s), "overall")) for s in self.shots]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + f"\n\n{self.caption}\n"

    def csv(self) -> str:
        """The same table as CSV with full-precision numbers, each few-shot std in its own column, "" where missing."""
        header = [*self.label_columns, *ACCURACY_COLUMNS]
        for shots in self.shots:
            header += [f"{shots}-shot", f"{shots}-shot std"]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        for row in self.rows:
            values = [row.labels[c] for c in self.label_columns] + [_measure(row.full, c)[0] for c in ACCURACY_COLUMNS]
            for shots in self.shots:
                values += _measure(row.few_shot.get(shots), "overall")
            writer.writerow(["" if value is None else value for value in values])
        return buffer.getvalue()


def _grouped_by_reason(left_out: dict[str, str]) -> str:
    """"a, b (why); c (other reason)": the runs left out, one group per reason."""
    by_reason: dict[str, list[str]] = {}
    for run, why in left_out.items():
        by_reason.setdefault(why, []).append(run)
    return "; ".join(f"{', '.join(runs)} ({why})" for why, runs in by_reason.items())


def _measure(report: dict[str, Any] | None, key: str) -> tuple[float | None, float | None]:
    """A report's value of ``key`` and its std over few-shot subsets (None where absent)."""
    if report is None:
        return None, None
    return report.get(key), report.get("std_over_subsets", {}).get(key)


def _formatted(value: float | None, spread: float | None) -> str:
    """2 decimals, "+- spread" when the value is a mean over subsets, "-" when missing (as eval.md writes them)."""
    if value is None:
        return "-"
    return f"{value:.2f}" if spread is None else f"{value:.2f} +- {spread:.2f}"


def _visible_reports(pattern: str, folder: Path) -> list[Path]:
    """eval.json files matching ``pattern`` under ``folder``, skipping hidden (partial) report folders."""
    return sorted(path for path in folder.glob(pattern) if not path.parent.name.startswith("."))


def find_reports(target: Path) -> tuple[list[Path], str | None, str]:
    """The eval.json files a RUN argument stands for (module docstring), the run name when it is a run folder,
    and why there is none ("" when there are some): NO_REPORTS for a run folder, else NOT_A_RUN."""
    if target.is_file():
        return [target], None, ""
    if not target.is_dir():
        raise FastltError(f"{target}: no such run folder, report folder or eval.json")
    if (target / REPORT_FILE).is_file():
        return [target / REPORT_FILE], None, ""
    in_run = _visible_reports(f"eval/*/{REPORT_FILE}", target)
    if in_run:
        return in_run, str(target), ""
    in_folder = _visible_reports(f"*/{REPORT_FILE}", target)
    if in_folder:
        return in_folder, None, ""
    if (target / "config.json").is_file() or (target / "checkpoints").is_dir():
        return [], str(target), NO_REPORTS
    return [], None, NOT_A_RUN


def runs_of(target: Path) -> list[tuple[Path, list[Path], str | None, str]]:
    """(RUN, its eval.json files, run name, why it has none) for each run a RUN argument names: the argument
    itself, or each visible subfolder of a folder of runs (a folder that find_reports finds NOT_A_RUN)."""
    found = find_reports(target)
    if found[2] != NOT_A_RUN:
        return [(target, *found)]
    subfolders = sorted(path for path in target.iterdir() if path.is_dir() and not path.name.startswith("."))
    return [(folder, *find_reports(folder)) for folder in subfolders] or [(target, *found)]


def load_report(path: Path, run: str | None) -> Report:
    """Read one eval.json; its run is named as the RUN argument if that was a run folder, else as the report says."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FastltError(f"{path}: not a readable evaluation report ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("reports"), dict):
        raise FastltError(f"{path}: not a fastlt evaluation report (no \"reports\" table)")
    return Report(run or str(document.get("run", path.parent)), document)


def _split_name(document: dict[str, Any]) -> str | None:
    """The pretraining split's file name without .npy ("all-train" for the whole part, as report folders say)."""
    file = document.get("pretraining_split", {}).get("file")
    if file is None:
        return None
    return "all-train" if file.startswith("(") else Path(file).stem


def _row_labels(report: Report, evaluation: str) -> dict[str, Any]:
    """The label columns of one evaluation row of a report; a non-default exit is part of the evaluation's name."""
    document = report.document
    exit_name = document.get("exit", "backbone")
    return {
        "run": report.run,
        "method": document.get("method"),
        "split": _split_name(document),
        "epoch": document.get("epoch"),
        "protocol": document.get("protocol", {}).get("name"),
        "evaluation": evaluation if exit_name == "backbone" else f"{evaluation} ({exit_name} exit)",
    }


def _evaluation_of(row_name: str, shots: str) -> str:
    """A few-shot row's full-shot counterpart: "linear, 100-shot" -> "linear"."""
    suffix = f", {shots}-shot"
    return row_name[: -len(suffix)] if shots != FULL and row_name.endswith(suffix) else row_name


def _shot_order(shots: str) -> tuple[int, int, str]:
    """Numbers of shots from most to fewest (100 before 50, as the BCL tables), then named ones (SDCLR's "few")."""
    return (0, -int(shots), "") if shots.isdigit() else (1, 0, shots)


def build_comparison(reports: Sequence[Report]) -> Comparison:
    """Rows in argument order, a run's full-shot reports first; few-shot rows join the row of the same
    run, checkpoint, protocol, exit and evaluation, or make their own row if the run has none."""
    by_run: dict[str, list[Report]] = {}
    for report in reports:
        by_run.setdefault(report.run, []).append(report)
    ordered = [report for group in by_run.values()
               for report in sorted(group, key=lambda r: str(r.document.get("shots", FULL)) != FULL)]
    rows: dict[tuple[Any, ...], Row] = {}
    all_shots: set[str] = set()
    for report in ordered:
        document = report.document
        shots = str(document.get("shots", FULL))
        checkpoint = document.get("checkpoint", {}).get("sha256")
        for row_name, accuracy in document["reports"].items():
            labels = _row_labels(report, _evaluation_of(row_name, shots))
            key = (checkpoint, *labels.values())
            row = rows.setdefault(key, Row(labels))
            if shots == FULL:
                row.full = accuracy
            else:
                row.few_shot[shots] = accuracy
                all_shots.add(shots)
    return Comparison(list(rows.values()), sorted(all_shots, key=_shot_order))


def compare_runs(targets: Sequence[Path]) -> Comparison:
    """Every report the RUN arguments stand for (each eval.json once), checked and read before anything is written.

    The runs without reports are left out and listed in ``left_out``; none with a report is an error.
    """
    reports: list[Report] = []
    seen: set[Path] = set()
    left_out: dict[str, str] = {}
    for target in targets:
        for folder, paths, run, why in runs_of(Path(target)):
            if why:
                left_out[str(folder)] = why
            for path in paths:
                if path.resolve() not in seen:
                    seen.add(path.resolve())
                    reports.append(load_report(path, run))
    if not reports:
        raise FastltError(f"nothing to compare: {_grouped_by_reason(left_out)}")
    return replace(build_comparison(reports), left_out=left_out)


def write_comparison(comparison: Comparison, csv_path: Path | None = None, md_path: Path | None = None) -> list[Path]:
    """Write the CSV and/or Markdown files, each atomically; returns the files written."""
    written = []
    if csv_path is not None:
        write_text_atomic(csv_path, comparison.csv())
        written.append(csv_path)
    if md_path is not None:
        write_text_atomic(md_path, comparison.markdown())
        written.append(md_path)
    return written
