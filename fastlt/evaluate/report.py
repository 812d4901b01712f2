"""Accuracy reports for long-tailed evaluation: overall, many / medium / few, per class, spread.

On a long-tailed pretraining set the overall test accuracy hides what happens to the
rare classes, so every evaluated thing (linear probe, kNN@k, a random-init baseline)
gets the same breakdown: per-class accuracy, the mean of it over each group of
classes (groups come from the pretraining split's per-class counts, computed
elsewhere), and the standard deviation over all per-class accuracies (class_std). That is
not the "Std" of the SDCLR and BCL tables, which is the spread of the three group
accuracies (docs/evaluation.md lists the three "std"s). All values are percentages in [0, 100].
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from fastlt.errors import FastltError
from fastlt.files import write_text_atomic

GROUP_NAMES = ("many", "medium", "few")
COLUMNS = (("overall", "overall"), ("many", "many"), ("medium", "medium"), ("few", "few"), ("class_std", "class std"))


def _as_ids(values: Tensor | np.ndarray, name: str) -> np.ndarray:
    """A 1-D int64 numpy copy of class ids from a tensor (any device) or an array."""
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise FastltError(f"{name}: expected 1-D integer class ids, got {array.dtype} {array.shape}")
    return array.astype(np.int64)


def _mean_or_none(values: np.ndarray) -> float | None:
    """Mean of the defined (non-NaN) values; None when there are none, so JSON stays valid."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else None


def accuracy_report(
    predictions: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    num_classes: int,
    groups: dict[str, np.ndarray] | None,
) -> dict:
    """Test accuracy overall, per class, per group and its class-wise spread, in percent.

    Keys: ``overall`` (fraction of test samples right), ``per_class`` (list of
    num_classes values), ``class_mean`` (mean of per_class: the Temperature-Schedules
    kNN metric; equals overall on a balanced test set), ``class_std`` (population
    standard deviation, ddof=0, of per_class, as SDCLR's np.std), and, when ``groups``
    is given, one key per group ("many", "medium", "few") holding the mean per-class
    accuracy of that group's class ids. A class with no test samples has accuracy
    None and is left out of every mean and of the std.
    """
    predictions = _as_ids(predictions, "predictions")
    labels = _as_ids(labels, "labels")
    if predictions.shape != labels.shape or len(labels) == 0:
        raise FastltError(f"predictions: expected one per test label ({len(labels)}), got {len(predictions)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise FastltError(f"labels: values must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    correct = predictions == labels
    totals = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels[correct], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(totals > 0, 100.0 * hits / totals, np.nan)
    defined = per_class[~np.isnan(per_class)]
    report: dict[str, Any] = {
        "overall": 100.0 * float(correct.mean()),
        "class_mean": float(defined.mean()),
        "class_std": float(defined.std()),
        "per_class": [None if math.isnan(value) else float(value) for value in per_class],
    }
    for name, ids in (groups or {}).items():
        if name not in GROUP_NAMES:
            raise FastltError(f"groups: unknown group {name!r} (expected {', '.join(GROUP_NAMES)})")
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= num_classes):
            raise FastltError(f"groups: {name} holds class ids outside [0, {num_classes})")
        report[name] = _mean_or_none(per_class[ids])
    return report


def _cell(value: float | None) -> str:
    """A percentage with 2 decimals, or a dash where the value does not exist."""
    return "-" if value is None else f"{value:.2f}"


def markdown_table(reports: dict[str, dict]) -> str:
    """One row per evaluated thing (e.g. "linear", "knn@10"): overall, many, medium, few, class std in percent."""
    lines = [
        "| evaluation | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for row, report in reports.items():
        lines.append(f"| {row} | " + " | ".join(_cell(report.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, reports: dict[str, dict], extra: dict) -> tuple[Path, Path]:
    """Write eval.json ({"reports": ..., **extra}) and eval.md (the table) into out_dir, each atomically.

    ``extra`` carries the context (checkpoint, protocol, timings) and must not use the
    key "reports". Numpy scalars and arrays in it are written as plain numbers and lists.
    """
    if "reports" in extra:
        raise ValueError("extra: the key 'reports' is reserved for the accuracy reports")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out_dir / "eval.json", out_dir / "eval.md"
    document = {"reports": reports, **extra}
    text = json.dumps(document, indent=2, allow_nan=False, default=_numpy_to_builtin)
    write_text_atomic(json_path, text + "\n")
    caption = (
        "Test accuracy in percent. many / medium / few: mean per-class accuracy over each group's classes; "
        "class std: standard deviation of per-class accuracy.\n\n"
    )
    write_text_atomic(markdown_path, "# Evaluation\n\n" + caption + markdown_table(reports))
    return json_path, markdown_path


def _numpy_to_builtin(value: Any) -> Any:
    """json.dumps fallback: numpy scalars and arrays become Python numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"extra: {type(value).__name__} is not JSON serialisable")
