"""PNG plots of training curves (from runs' metrics.jsonl) and of per-class accuracy against class size.

Training curves: ``fastlt plot RUN... --out DIR`` draws one PNG per quantity over epochs, one
line per run on each axes, so runs are compared on shared axes:
- the loss;
- the kNN monitor's held-out accuracy, mean per class and per group (``monitor_knn``,
  ``monitor_knn_many`` ... from train/monitor.py; percent, on some epochs only, null where a
  group had no held-out sample);
- the temperature;
- BCL's mean augmentation weight, overall and per group (``weight_mean``, ``weight_mean_many``
  ..., see methods/boost.py).
A quantity no run logged is skipped and said so; a run that lacks a key, or has it on some
epochs only, draws what it has.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global
backend switch) and every PNG is written atomically.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fastlt.errors import FastltError
from fastlt.files import replace_atomically

METRICS_FILE = "metrics.jsonl"
PANEL_INCHES = (4.0, 3.0)  # width, height of one axes' share of a training-curve figure
DPI = 100
GROUP_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:green"}
PER_CLASS_INCHES = (6.4, 4.4)


@dataclass(frozen=True)
class CurvePlot:
    """One PNG of training curves: one axes per (metrics key, axes title), drawn if any run logged that key."""

    name: str
    title: str
    ylabel: str
    panels: tuple[tuple[str, str], ...]
    missing: str  # why it is skipped when no run logged any of its keys


CURVE_PLOTS = (
    CurvePlot("loss", "training loss", "loss (epoch mean)", (("loss", "loss"),), "no loss logged"),
    CurvePlot("knn", "kNN monitor (held-out samples)", "kNN accuracy (%)",
              (("monitor_knn", "class mean"), ("monitor_knn_many", "many"), ("monitor_knn_medium", "medium"),
               ("monitor_knn_few", "few")), "no monitor_knn keys: no kNN monitor ran"),
    CurvePlot("temperature", "temperature", "tau", (("temperature", "temperature"),), "no temperature logged"),
    CurvePlot("bcl_weights", "BCL augmentation weight (mean)", "mean weight",
              (("weight_mean", "all samples"), ("weight_mean_many", "many"), ("weight_mean_medium", "medium"),
               ("weight_mean_few", "few")), "no weight_mean keys: not a BCL run"),
)


@dataclass(frozen=True)
class RunMetrics:
    """One run's per-epoch metrics records, under the name its lines carry in legends."""

    name: str
    records: list[dict[str, Any]]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Epochs and values of ``key`` on the epochs that logged it as a number (not absent, not null)."""
        points = [(record["epoch"], float(record[key])) for record in self.records
                  if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool)]
        return [epoch for epoch, _ in points], [value for _, value in points]


@dataclass(frozen=True)
class PlotResult:
    """The PNGs written and, for each plot skipped, why."""

    written: list[Path]
    skipped: dict[str, str]

    def skipped_line(self) -> str | None:
        """One line naming every skipped plot and its reason, or None when nothing was skipped."""
        if not self.skipped:
            return None
        return "skipped: " + "; ".join(f"{name} ({why})" for name, why in self.skipped.items())


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl records. A last line without its newline is a record still being written
    by a live run and is left out if it does not parse; any other bad line is an error naming it."""
    path = run / METRICS_FILE
    if not path.is_file():
        kind = "a run folder without" if (run / "config.json").is_file() else "not a run folder: no"
        raise FastltError(f"{run}: {kind} {METRICS_FILE}")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # the unterminated last line: an epoch being appended right now
                continue
            raise FastltError(f"{path}: line {number}: not JSON ({error})") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise FastltError(f"{path}: line {number}: not an epoch record (no integer \"epoch\")")
        records.append(record)
    if not records:
        raise FastltError(f"{path}: no epochs logged yet")
    return records


def legend_names(runs: Sequence[Path]) -> list[str]:
    """Run folder names, or the paths as given where two runs share a folder name."""
    names = [Path(run).name or str(run) for run in runs]
    return names if len(set(names)) == len(names) else [str(run) for run in runs]


def _save_png(figure: Figure, path: Path) -> None:
    """Render with the Agg canvas and replace ``path`` atomically."""
    FigureCanvasAgg(figure)
    replace_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=DPI))


def draw_curves(plot: CurvePlot, runs: Sequence[RunMetrics], path: Path) -> bool:
    """One axes per panel that any run logged, on a shared y axis so the groups compare at a glance, and one
    line per run in the run's own colour on each; False (nothing written) if no run logged any panel."""
    panels = [(key, title) for key, title in plot.panels if any(run.series(key)[0] for run in runs)]
    if not panels:
        return False
    figure = Figure(figsize=(PANEL_INCHES[0] * len(panels), PANEL_INCHES[1]), dpi=DPI, layout="constrained")
    figure.suptitle(plot.title)
    for axes, (key, title) in zip(figure.subplots(1, len(panels), squeeze=False, sharey=True)[0], panels):
        for index, run in enumerate(runs):
            epochs, values = run.series(key)
            if epochs:
                axes.plot(epochs, values, marker=".", markersize=4, color=f"C{index % 10}", label=run.name)
        if len(panels) > 1:
            axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 2.5
        axes.grid(alpha=0.3)
    figure.axes[0].set_ylabel(plot.ylabel)
    legend = {label: handle for axes in figure.axes for handle, label in zip(*axes.get_legend_handles_labels())}
    figure.axes[0].legend(list(legend.values()), list(legend.keys()), fontsize="small")
    _save_png(figure, path)
    return True


def plot_runs(runs: Sequence[Path], out_dir: Path) -> PlotResult:
    """Every training-curve PNG (CURVE_PLOTS) for these runs into ``out_dir`` as NAME.png.

    All runs' metrics are read and checked before the first file is written.
    """
    metrics = [RunMetrics(name, read_metrics(Path(run))) for name, run in zip(legend_names(runs), runs)]
    written, skipped = [], {}
    for plot in CURVE_PLOTS:
        path = Path(out_dir) / f"{plot.name}.png"
        if draw_curves(plot, metrics, path):
            written.append(path)
        else:
            skipped[plot.name] = plot.missing
    return PlotResult(written, skipped)


def per_class_accuracy_plot(
    per_class_accuracy: Sequence[float | None] | np.ndarray,
    train_counts: Sequence[int] | np.ndarray,
    groups: Mapping[str, Sequence[int] | np.ndarray],
    path: Path,
    title: str,
) -> Path:
    """A PNG scatter of each class's test accuracy (%) against its training count (log x), one colour per group.

    Shows whether accuracy follows class size, which the group means alone hide. Arguments are
    as a report holds them: ``per_class_accuracy`` is report.accuracy_report's "per_class" (None
    or NaN for a class without test images), ``train_counts`` the pretraining split's per-class
    counts, ``groups`` "many" / "medium" / "few" -> class ids (may be empty). Each group's mean
    is the mean of its classes' defined accuracies (report.py's many / medium / few), drawn as a
    dashed segment over the group's range of counts. Classes with no training image (no place on
    a log axis) or no test image are counted in a note, not drawn. Written atomically; returns ``path``.
    """
    accuracy = np.array([np.nan if value is None else value for value in per_class_accuracy], dtype=np.float64)
    counts = np.asarray(train_counts, dtype=np.int64)
    if accuracy.ndim != 1 or counts.shape != accuracy.shape:
        raise ValueError(f"train_counts: expected one count per class ({len(accuracy)}), got shape {counts.shape}")
    members = {name: np.asarray(ids, dtype=np.int64) for name, ids in groups.items()}
    for name, ids in members.items():
        if len(ids) and (ids.min() < 0 or ids.max() >= len(accuracy)):
            raise ValueError(f"groups: {name} holds class ids outside [0, {len(accuracy)})")
    grouped = np.concatenate([np.zeros(0, np.int64), *members.values()])
    members["no group"] = np.setdiff1d(np.arange(len(accuracy)), grouped)
    drawable = (counts > 0) & ~np.isnan(accuracy)

    figure = Figure(figsize=PER_CLASS_INCHES, dpi=DPI, layout="constrained")
    axes = figure.subplots()
    for name, ids in members.items():
        shown = ids[drawable[ids]]
        if not len(shown):
            continue
        colour = GROUP_COLOURS.get(name, "tab:gray")
        axes.scatter(counts[shown], accuracy[shown], s=24, color=colour, alpha=0.8, label=f"{name} ({len(shown)})")
        defined = ids[~np.isnan(accuracy[ids])]
        if name in GROUP_COLOURS and len(defined):
            mean = float(accuracy[defined].mean())
            low, high = counts[shown].min(), counts[shown].max()
            axes.plot([low / 1.15, high * 1.15], [mean, mean], linestyle="--", linewidth=2, color=colour,
                      label=f"{name} mean {mean:.1f}")
    hidden = int((~drawable).sum())
    if hidden:
        axes.annotate(f"{hidden} class(es) not shown: no training or no test images", (0.01, 0.01),
                      xycoords="axes fraction", fontsize="small")
    axes.set_xscale("log")
    axes.set_ylim(-3, 103)
    axes.set_xlabel("training images of the class (pretraining split)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    if axes.get_legend_handles_labels()[0]:
        figure.legend(fontsize="small", loc="outside right upper")
    _save_png(figure, Path(path))
    return Path(path)
