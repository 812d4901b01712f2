"""Accuracy of class predictions on a long-tailed set: overall, per class, per many / medium / few group.

The training monitor and every evaluation report the same breakdown, so it is computed here,
below both. On a long-tailed pretraining set the overall accuracy hides what happens to the
rare classes: each group's number is the mean per-class accuracy of its class ids (the groups
come from the pretraining split's counts, ``fastlt.data.splits.class_groups``). All values are
percentages in [0, 100].
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import Tensor

from fastlt.data.splits import GROUP_NAMES
from fastlt.errors import FastltError


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
    """Test accuracy overall, per class, per group and two spreads, in percent.

    Keys: ``overall`` (fraction of test samples right), ``per_class`` (list of
    num_classes values), ``class_mean`` (mean of per_class: the Temperature-Schedules
    kNN metric; equals overall on a balanced test set), ``class_std`` (population
    standard deviation, ddof=0, of per_class), and, when ``groups`` is given, one key per
    group ("many", "medium", "few") holding the mean per-class accuracy of that group's
    class ids, and ``group_std``: numpy.std of the three group accuracies, the "Std" of
    the SDCLR and BCL tables. A class with no test samples has accuracy None and is left
    out of every mean and of the std.
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
    group_accuracies = [report.get(name) for name in GROUP_NAMES]
    if None not in group_accuracies:
        report["group_std"] = float(np.std(group_accuracies))
    return report
