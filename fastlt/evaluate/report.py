"""Accuracy reports for long-tailed evaluation: overall, many / medium / few, per class, spread.

Every evaluated thing (linear probe, kNN@k, a random-init baseline) gets the breakdown of
``fastlt.measure.accuracy.accuracy_report``: per-class accuracy, the mean of it over each group
of classes, and the standard deviation over all per-class accuracies (class_std). That is
not the "Std" of the SDCLR and BCL tables, which is the spread of the three group
accuracies (docs/evaluation.md lists the three "std"s). All values are percentages in [0, 100].
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fastlt.data.splits import GROUP_NAMES
from fastlt.files import check_free, write_text_atomic

COLUMNS = (("overall", "overall"), ("many", "many"), ("medium", "medium"), ("few", "few"),
           ("group_std", "group std"), ("class_std", "class std"))
PER_CLASS_PNG = "per_class.png"
SUMMARISED = ("overall", "class_mean", "class_std", *GROUP_NAMES, "group_std")  # averaged over few-shot subsets


def summarise_subsets(reports: list[dict]) -> dict:
    """Mean over few-shot subsets of each summary measure, with the std (ddof=0) over subsets beside it.

    BCL reports few-shot accuracy as the mean over 5 probe subsets; the spread shows how much
    of a difference between methods the choice of subset alone can make.
    """
    summary: dict[str, Any] = {"subsets": len(reports), "std_over_subsets": {}}
    for key in SUMMARISED:
        values = [report.get(key) for report in reports]
        if values and None not in values:
            summary[key] = float(np.mean(values))
            summary["std_over_subsets"][key] = float(np.std(values))
    summary["per_subset"] = reports
    return summary


def _cell(report: dict, key: str) -> str:
    """A percentage with 2 decimals (and +- its std over subsets, if any), or a dash where it does not exist."""
    value = report.get(key)
    if value is None:
        return "-"
    spread = report.get("std_over_subsets", {}).get(key)
    return f"{value:.2f}" if spread is None else f"{value:.2f} +- {spread:.2f}"


def markdown_table(reports: dict[str, dict], headline: str = "overall") -> str:
    """One row per evaluated thing (e.g. "linear", "knn@10"): overall, many, medium, few and the two stds.

    ``headline="class_mean"`` puts the mean per-class accuracy in the first column instead of
    the sample accuracy: the Temperature-Schedules papers report that.
    """
    columns = ((headline, headline.replace("_", " ")), *COLUMNS[1:])
    lines = [
        "| evaluation | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row, report in reports.items():
        lines.append(f"| {row} | " + " | ".join(_cell(report, key) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"


CAPTION = (
    "Test accuracy in percent. overall: fraction of test images right; class mean: mean per-class accuracy "
    "(the Temperature-Schedules papers' measure). many / medium / few: mean per-class accuracy over each "
    "group's classes "
    "(groups from the pretraining split's class counts); group std: numpy.std of the three group "
    "accuracies, the Std of the SDCLR and BCL tables; class std: standard deviation over all "
    "per-class accuracies. Few-shot rows: mean +- std over the probe subsets.\n"
)


def check_report_free(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace an existing report folder unless ``overwrite``; callers check before computing."""
    check_free([out_dir], overwrite)


def write_report(out_dir: Path, title: str, reports: dict[str, dict], context: dict, overwrite: bool = False,
                 headline: str = "overall", figure: Callable[[Path], object] | None = None) -> tuple[Path, Path]:
    """Write eval.json ({"title", "reports", **context}), eval.md and (with ``figure``, called with the
    PNG's path) per_class.png into the folder out_dir, as a whole.

    The folder is built beside its final place and renamed into it, so a report is never
    half written; an existing report folder is replaced only with ``overwrite``. ``context``
    names what was measured (run, checkpoint, probe lists, protocol) and must not use the
    keys "title" and "reports". Numpy values in it are written as plain numbers and lists.
    """
    if {"title", "reports"} & set(context):
        raise ValueError("context: the keys 'title' and 'reports' are reserved")
    out_dir = Path(out_dir)
    check_report_free(out_dir, overwrite)
    document = {"title": title, "reports": reports, **context}
    text = json.dumps(document, indent=2, allow_nan=False, default=_numpy_to_builtin)
    details = "".join(f"- {key}: {_describe(value)}\n" for key, value in context.items() if key != "timings")
    building = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.partial")
    building.mkdir(parents=True)
    try:
        write_text_atomic(building / "eval.json", text + "\n")
        figures = ""
        if figure is not None:
            figure(building / PER_CLASS_PNG)
            figures = f"\n![per-class accuracy against training images]({PER_CLASS_PNG})\n"
        write_text_atomic(building / "eval.md",
                          f"# {title}\n\n{CAPTION}\n{markdown_table(reports, headline)}\n{details}{figures}")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        building.rename(out_dir)
    finally:
        if building.exists():
            shutil.rmtree(building)
    return out_dir / "eval.json", out_dir / "eval.md"


def _describe(value: Any) -> str:
    """A context value on one Markdown line."""
    return value if isinstance(value, str) else json.dumps(value, default=_numpy_to_builtin)


def _numpy_to_builtin(value: Any) -> Any:
    """json.dumps fallback: numpy scalars and arrays become Python numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"extra: {type(value).__name__} is not JSON serialisable")
