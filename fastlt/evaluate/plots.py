"""PNG plots of training curves (from runs' metrics.jsonl) and of per-class accuracy against class size.

Training curves: ``fastlt plot RUN... --out DIR`` draws one PNG per quantity over epochs, one
line per run on each axes, so runs are compared on shared axes:
- the loss, one axes per loss objective (from each run's config.json);
- the kNN monitor's held-out accuracy, mean per class and per group (``monitor_knn``,
  ``monitor_knn_many`` ... from train/monitor.py; percent, on some epochs only, null where a
  group had no held-out sample);
- the temperature;
- BCL's mean augmentation weight per group (``weight_mean_many`` ..., see methods/boost.py).
A quantity no run logged is skipped and said so; a run that lacks a key, or has it on some
epochs only, draws what it has. The legend stands right of the axes, one entry per run, and
each run has its own (colour, line style, marker), so 30 runs still read apart.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global
backend switch) and every PNG is written atomically.
"""
from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.ticker import MaxNLocator

from fastlt.errors import FastltError
from fastlt.files import check_free, replace_atomically
from fastlt.methods import PRESETS

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
PANEL_INCHES = (4.0, 3.0)  # width, height of one axes' share of a training-curve figure, legend not included
DPI = 100
GROUP_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:green"}
PER_CLASS_INCHES = (6.4, 4.4)
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
MARKED_POINTS = 10  # a longer series is marked on about this many of its epochs, not on every one
LEGEND_FILL = 0.9  # the share of the figure's height one legend column may take before the next starts
LEGEND_MARGIN_INCHES = 0.15
TITLE_FILL = 0.9  # share of the axes' width a wrapped title's line is aimed at
UNKNOWN_OBJECTIVE = "unknown (no method in config.json)"


@dataclass(frozen=True)
class CurvePlot:
    """One PNG of training curves: one axes per (metrics key, axes title) that any run logged, or per objective.

    ``min_span`` is the smallest y range shown, in the quantity's units, so that a single point or a
    flat line gets an axis that reads at the quantity's precision. ``by_objective`` gives each loss
    objective its own axes: the objectives' values live on different scales (SupCon's ~9 against
    InfoNCE's ~5 at the start of training) and are not comparable anyway, while normalising each
    loss would hide what is comparable, the loss values of runs sharing an objective.
    """

    name: str
    title: str
    ylabel: str
    panels: tuple[tuple[str, str], ...]
    missing: str  # why it is skipped when no run logged any of its keys
    min_span: float
    by_objective: bool = False


CURVE_PLOTS = (
    CurvePlot("loss", "training loss", "loss (epoch mean)", (("loss", "loss"),), "no loss logged", 0.2,
              by_objective=True),
    CurvePlot("knn", "kNN monitor (held-out samples)", "kNN accuracy (%)",
              (("monitor_knn", "class mean"), ("monitor_knn_many", "many"), ("monitor_knn_medium", "medium"),
               ("monitor_knn_few", "few")), "no monitor_knn keys: no kNN monitor ran", 10.0),
    CurvePlot("temperature", "temperature", "tau", (("temperature", "temperature"),), "no temperature logged", 0.05),
    # Per group only: the mean weight over all samples ("weight_mean") is 0.5 on every epoch by construction, the
    # weights being z-scores scaled into [0, 1] around 0.5 (methods/boost.py).
    CurvePlot("bcl_weights", "BCL augmentation weight (mean)", "mean weight",
              (("weight_mean_many", "many"), ("weight_mean_medium", "medium"), ("weight_mean_few", "few")),
              "no weight_mean keys: not a BCL run", 0.05),
)


@dataclass(frozen=True)
class RunMetrics:
    """One run's per-epoch metrics records, under the name its lines carry in legends, and its loss objective."""

    name: str
    records: list[dict[str, Any]]
    objective: str

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Epochs and values of ``key`` on the epochs that logged it as a number (not absent, not null)."""
        points = [(record["epoch"], float(record[key])) for record in self.records
                  if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool)]
        return [epoch for epoch, _ in points], [value for _, value in points]


@dataclass(frozen=True)
class Panel:
    """One axes of a curve figure: the metrics key it draws, its title, and the runs (indices) drawn on it."""

    key: str
    title: str
    runs: tuple[int, ...]


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


def run_objective(run: Path) -> str:
    """The loss objective of a run as its config.json (the recipe it ran) gives it: ``method.objective``, or the
    method preset's where that is empty; UNKNOWN_OBJECTIVE where the file or the method is missing or unreadable,
    which only puts the run's loss on a panel of its own."""
    try:
        config = json.loads((run / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return UNKNOWN_OBJECTIVE
    method = config.get("method") if isinstance(config, dict) else None
    if not isinstance(method, dict):
        return UNKNOWN_OBJECTIVE
    preset = PRESETS.get(str(method.get("name")))
    objective = method.get("objective") or (preset.objective if preset is not None else None)
    return objective if isinstance(objective, str) else UNKNOWN_OBJECTIVE


def legend_names(runs: Sequence[Path]) -> list[str]:
    """Run folder names, or the paths as given where two runs share a folder name."""
    names = [Path(run).name or str(run) for run in runs]
    return names if len(set(names)) == len(names) else [str(run) for run in runs]


def _save_png(figure: Figure, path: Path) -> None:
    """Render with the figure's Agg canvas and replace ``path`` atomically."""
    replace_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=DPI))


def logged_panels(plot: CurvePlot, runs: Sequence[RunMetrics]) -> list[Panel]:
    """The panels of ``plot`` that at least one run logged, each with the runs drawn on it; none means the plot is
    skipped. With ``plot.by_objective`` a key's runs are split into one panel per objective, in order of first run."""
    panels = []
    for key, title in plot.panels:
        logged = [index for index, run in enumerate(runs) if run.series(key)[0]]
        if not plot.by_objective:
            panels += [Panel(key, title, tuple(logged))] if logged else []
            continue
        for objective in dict.fromkeys(runs[index].objective for index in logged):
            panels.append(Panel(key, f"objective: {objective}",
                                tuple(index for index in logged if runs[index].objective == objective)))
    return panels


def run_style(index: int) -> dict[str, str]:
    """The index-th run's colour, line style and marker. Colours cycle through matplotlib's ten, the line style
    steps every ten runs and the marker every run (of seven), so no two of the first 280 runs look alike."""
    return {"color": f"C{index % 10}", "linestyle": LINESTYLES[index // 10 % len(LINESTYLES)],
            "marker": MARKERS[index % len(MARKERS)]}


def marked_points(points: int, index: int) -> tuple[int, int]:
    """matplotlib's markevery (start, step) for the index-th run's series of ``points`` points: every point of a
    short series; on a long one about MARKED_POINTS, from a start that differs between runs so that lines drawn
    exactly over each other still show each run's markers."""
    step = max(1, math.ceil(points / MARKED_POINTS))
    return index % step, step


def coinciding(runs: Sequence[RunMetrics], panels: Sequence[Panel]) -> dict[int, int]:
    """Run index -> the first earlier run with exactly the same points on every panel, whose line it hides."""
    first: dict[tuple, int] = {}
    same = {}
    for index in sorted({index for panel in panels for index in panel.runs}):
        points = tuple((place, *map(tuple, runs[index].series(panel.key))) for place, panel in enumerate(panels)
                       if index in panel.runs)
        same[index] = first.setdefault(points, index)
    return {index: earlier for index, earlier in same.items() if earlier != index}


def widen_to(row: Sequence[Axes], min_span: float) -> None:
    """Give a y range over ``row`` (axes that share it) narrower than ``min_span`` (one point, flat lines) that
    span around its middle, and an axes with a single epoch one epoch either side, instead of matplotlib's few
    percent around the value (10 +- 0.5 for one kNN point), which reads as a precision the data lacks."""
    low, high = min(axes.dataLim.y0 for axes in row), max(axes.dataLim.y1 for axes in row)
    if high - low < min_span:
        row[0].set_ylim((low + high - min_span) / 2, (low + high + min_span) / 2)
    for axes in row:
        first, last = axes.dataLim.intervalx
        if first == last:
            axes.set_xlim(first - 1, last + 1)


def legend_right(figure: Figure, handles: Sequence[Artist], labels: Sequence[str]) -> Legend:
    """A figure legend right of the axes, in as many columns as its entries need to fit the figure's height, the
    figure widened by its width so that the axes keep their size and no entry is cut."""
    renderer = figure.canvas.get_renderer()
    one_column = figure.legend(handles, labels, loc="outside right upper", fontsize="small")
    columns = math.ceil(one_column.get_window_extent(renderer).height / (LEGEND_FILL * figure.bbox.height))
    one_column.remove()  # a legend lays its entries out when made: set_ncols afterwards would not rearrange them
    legend = figure.legend(handles, labels, loc="outside right upper", fontsize="small", ncols=columns)
    width = legend.get_window_extent(renderer).width / figure.dpi
    figure.set_figwidth(figure.get_figwidth() + width + LEGEND_MARGIN_INCHES)
    return legend


def title_within(axes: Axes, title: str) -> None:
    """Set ``title`` over ``axes``, wrapped into lines no wider than the axes once laid out, so that it cannot
    reach a legend beside them."""
    figure = axes.get_figure()
    text = axes.set_title(title)
    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()
    ratio = axes.get_window_extent(renderer).width / text.get_window_extent(renderer).width
    if ratio < 1:  # characters per line from the title's mean character width, a little short for wide letters
        text.set_text(textwrap.fill(title, max(1, math.floor(len(title) * ratio * TITLE_FILL))))


def new_figure(width: float, height: float) -> Figure:
    """An empty constrained-layout figure on the Agg canvas (no pyplot, no display)."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def curve_figure(plot: CurvePlot, runs: Sequence[RunMetrics]) -> Figure:
    """One axes per logged panel (at least one), one line per run on each, and one legend entry per run right of
    the axes. Group panels share their y axis so the groups compare at a glance; objective panels do not."""
    panels = logged_panels(plot, runs)
    same = coinciding(runs, panels)
    figure = new_figure(PANEL_INCHES[0] * len(panels), PANEL_INCHES[1])
    handles = {}
    row = figure.subplots(1, len(panels), squeeze=False, sharey=not plot.by_objective)[0]
    for axes, panel in zip(row, panels):
        for index in panel.runs:
            epochs, values = runs[index].series(panel.key)
            handles[index], = axes.plot(epochs, values, markersize=4, linewidth=1.2, **run_style(index),
                                        markevery=marked_points(len(epochs), index))
        if len(panels) > 1 or plot.by_objective:
            axes.set_title(panel.title, fontsize="medium")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 2.5
        axes.grid(alpha=0.3)
    for shared in [[axes] for axes in row] if plot.by_objective else [row]:
        widen_to(shared, plot.min_span)
    row[0].set_ylabel(plot.ylabel)
    order = sorted(handles)
    labels = [runs[index].name + (f" (same as {runs[same[index]].name})" if index in same else "") for index in order]
    legend_right(figure, [handles[index] for index in order], labels)
    figure.draw_without_rendering()  # lays the axes out, to centre the title over them, clear of the legend
    figure.suptitle(plot.title, x=(row[0].get_position().x0 + row[-1].get_position().x1) / 2)
    return figure


def draw_curves(plot: CurvePlot, runs: Sequence[RunMetrics], path: Path) -> None:
    """curve_figure as a PNG at ``path``, written atomically."""
    _save_png(curve_figure(plot, runs), path)


def plot_runs(runs: Sequence[Path], out_dir: Path, overwrite: bool = False) -> PlotResult:
    """Every training-curve PNG (CURVE_PLOTS) some run has data for, into ``out_dir`` as NAME.png.

    All runs' metrics are read and checked, and the PNGs to be written are refused where they exist
    (unless ``overwrite``), before the first file is written; a skipped plot's file is left alone.
    """
    metrics = [RunMetrics(name, read_metrics(Path(run)), run_objective(Path(run)))
               for name, run in zip(legend_names(runs), runs)]
    drawn = [plot for plot in CURVE_PLOTS if logged_panels(plot, metrics)]
    written = [Path(out_dir) / f"{plot.name}.png" for plot in drawn]
    check_free(written, overwrite)
    for plot, path in zip(drawn, written):
        draw_curves(plot, metrics, path)
    return PlotResult(written, {plot.name: plot.missing for plot in CURVE_PLOTS if plot not in drawn})


def per_class_accuracy_plot(
    per_class_accuracy: Sequence[float | None] | np.ndarray,
    train_counts: Sequence[int] | np.ndarray,
    groups: Mapping[str, Sequence[int] | np.ndarray],
    path: Path,
    title: str,
) -> Path:
    """per_class_figure as a PNG at ``path``, written atomically; returns ``path``."""
    _save_png(per_class_figure(per_class_accuracy, train_counts, groups, title), Path(path))
    return Path(path)


def per_class_figure(
    per_class_accuracy: Sequence[float | None] | np.ndarray,
    train_counts: Sequence[int] | np.ndarray,
    groups: Mapping[str, Sequence[int] | np.ndarray],
    title: str,
) -> Figure:
    """A scatter of each class's test accuracy (%) against its training count (log x), one colour per group.

    Shows whether accuracy follows class size, which the group means alone hide. Arguments are
    as a report holds them: ``per_class_accuracy`` is report.accuracy_report's "per_class" (None
    or NaN for a class without test images), ``train_counts`` the pretraining split's per-class
    counts, ``groups`` "many" / "medium" / "few" -> class ids (may be empty). Each group's mean
    is the mean of its classes' defined accuracies (report.py's many / medium / few), drawn as a
    dashed segment over the group's range of counts. Classes with no training image (no place on
    a log axis) or no test image are counted in a note, not drawn. The title is wrapped to the axes' width, so
    a long one (a report's run, row and scope) never runs into the legend beside them.
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

    figure = new_figure(*PER_CLASS_INCHES)
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
    axes.grid(alpha=0.3, which="both")
    if axes.get_legend_handles_labels()[0]:
        figure.legend(fontsize="small", loc="outside right upper")
    title_within(axes, title)
    return figure
