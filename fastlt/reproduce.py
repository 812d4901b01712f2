"""Reproduce a published table: pretrain its presets on its splits, evaluate each with its paper's protocol,
and write our numbers beside the published ones.

The table's runs are a sweep (fastlt.sweep): they run on every GPU at once, or on the CPU, or as Slurm
jobs, and every stage leaves a result on disk that the next invocation finds: a finished run is not
trained again, a stopped one resumes from its checkpoint, an existing report is not recomputed. So
`make reproduce-cifar100` can be stopped at any point and run again.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastlt.data.splits import split_name
from fastlt.errors import FastltError, RunStopped
from fastlt.evaluate.plots import PlotResult
from fastlt.evaluate.report import PER_CLASS_PNG
from fastlt.files import read_text, write_text_atomic
from fastlt.recipe import Recipe, as_override, find_recipe, option_overrides
from fastlt.sweep import Engine, run_plan
from fastlt.sweep.plan import SweepPlan, SweepPoint
from fastlt.sweep.state import epochs_logged, run_dir_of


@dataclass(frozen=True)
class Row:
    """One method of a table: its shipped recipe, the protocol its paper used, and the published numbers."""

    recipe: str  # name inside the table's pipelines folder, e.g. "bcl-d"
    label: str
    protocol: str  # "bcl" or "ts"
    published: dict[str, float] = field(default_factory=dict)  # column -> published accuracy


@dataclass(frozen=True)
class Table:
    """A published table and how to rebuild it: recipes folder, split files, columns, source."""

    folder: str  # pipelines/<folder>
    split_file: str  # pattern with {split}, relative to the recipes folder; "" = the recipe's own split
    rows: tuple[Row, ...]
    source: str
    baseline: bool = False  # also evaluate a random-init backbone (with the first row), for tables without papers


BCL_COLUMNS = ("full", "100", "50")  # full-shot, 100-shot, 50-shot linear probe (BCL protocol)
TS_COLUMNS = ("knn@1", "knn@10", "svm FS", "svm LT")  # class-mean accuracies (TS protocol)

# REFERENCE.md section 9: ResNet-18, 2000 epochs; BCL table on CIFAR-100-LT split 1, TS on its own LT data
# (CIFAR), and TS's ImageNet-100-LT row (ResNet-50, 800 epochs).
TABLES: dict[str, Table] = {
    "cifar100": Table(
        "cifar100_lt", "../../splits/published/sdclr/cifar100_imbSub_with_subsets/cifar100_split{split}_D_i.npy",
        (Row("simclr", "SimCLR", "bcl", {"full": 50.7, "100": 46.3, "50": 42.4}),
         Row("sdclr", "SDCLR", "bcl", {"full": 55.0, "100": 49.7, "50": 45.6}),
         Row("bcl-i", "BCL-I", "bcl", {"full": 55.7, "100": 50.1, "50": 45.8}),
         Row("bcl-d", "BCL-D", "bcl", {"full": 58.7, "100": 52.6, "50": 48.7}),
         Row("simclr-ts", "SimCLR-TS", "ts", {"knn@1": 29.12, "knn@10": 28.11, "svm FS": 27.02, "svm LT": 32.29})),
        "BCL (Zhou et al., ICML 2022) Table 1, CIFAR-100-LT split 1; TS (Kukleva et al., ICLR 2023)"),
    "cifar10": Table(
        "cifar10_lt", "../../splits/published/sdclr/cifar10_imbSub_with_subsets/split{split}_D_i.npy",
        (Row("simclr-ts", "SimCLR-TS", "ts", {"knn@1": 61.21, "knn@10": 61.20, "svm FS": 71.49, "svm LT": 62.92}),),
        "TS (Kukleva et al., ICLR 2023), CIFAR-10-LT"),
    "imagenet100": Table(
        "imagenet100_lt", "",  # the recipe's own split: the store's published LT list (store:lt)
        (Row("simclr-ts", "SimCLR-TS", "ts", {"knn@1": 38.38, "knn@10": 38.98, "svm FS": 45.18, "svm LT": 47.26}),),
        "TS (Kukleva et al., ICLR 2023), ImageNet-100-LT, ResNet-50, 800 epochs"),
    "digits": Table(
        "digits_lt", "",
        (Row("simclr", "SimCLR", "bcl"), Row("sdclr", "SDCLR", "bcl"), Row("bcl-i", "BCL-I", "bcl"),
         Row("bcl-d", "BCL-D", "bcl")),
        "none: the built-in data set has no published numbers; the table shows the pipeline end to end",
        baseline=True),
}


def report_folders(recipe: Recipe, row: Row, shots: tuple[str, ...]) -> dict[str, str]:
    """Column group -> the report folder name ``fastlt linear-eval`` gives it (docs/evaluating-runs.md)."""
    if row.protocol == "ts":
        return {"ts": f"ts-{split_name(recipe.data.split)}"}
    full = split_name(recipe.eval.train_split)
    return {shot: f"bcl-linear-{full}" if shot == "full" else f"bcl-linear-{shot}shot" for shot in shots}


def row_results(row: Row, recipe: Recipe, run_dir: Path, shots: tuple[str, ...]) -> dict[str, Any]:
    """Our numbers for a row's columns, from the reports its sweep point wrote."""
    folders = report_folders(recipe, row, shots)
    documents = {shot: json.loads(read_text(run_dir / "eval" / name / "eval.json",
                                            missing=f"{run_dir}: no {name} report; run `fastlt linear-eval` on it"))
                 for shot, name in folders.items()}
    values: dict[str, Any] = {"_reports": [str(run_dir / "eval" / name) for name in folders.values()]}
    if row.protocol == "ts":
        rows = documents["ts"]["reports"]
        return values | {column: rows[column]["class_mean"] for column in TS_COLUMNS if column in rows}
    for shot, document in documents.items():
        report = document["reports"]["linear" if shot == "full" else f"linear, {shot}-shot"]
        values[shot] = report["overall"]
        if shot == "full":
            values["groups"] = {name: report.get(name) for name in ("many", "medium", "few")}
            baseline = document["reports"].get("random-init linear")
            if baseline is not None:
                values["random-init"] = {"full": baseline["overall"],
                                         "groups": {name: baseline.get(name) for name in ("many", "medium", "few")}}
    return values


def table_shots(table_name: str) -> tuple[str, ...]:
    """The BCL probe's columns: full, 100- and 50-shot; the digits table (no few-shot lists) full only."""
    return BCL_COLUMNS if table_name != "digits" else ("full",)


def reproduction_plan(table_name: str, store: Path, splits: tuple[int, ...], epochs: int | None,
                      overrides: tuple[str, ...], precision: str) -> SweepPlan:
    """The table's runs as a sweep: each row's shipped recipe on each split, named ``<recipe>-split<N>``."""
    table = TABLES[table_name]
    points = []
    for split in splits:
        for row in table.rows:
            recipe_path = find_recipe(f"{table.folder}/{row.recipe}").resolve()
            settings = [f"data.store={json.dumps(str(store.resolve()))}", f"eval.protocol={json.dumps(row.protocol)}",
                        *option_overrides({"--precision": ("train.precision", precision)}), *overrides]
            if table.split_file:
                split_path = (recipe_path.parent / table.split_file.format(split=split)).resolve()
                settings.append(f"data.split={json.dumps(str(split_path))}")
            if epochs is not None:
                settings.append(f"train.epochs={epochs}")
            point = SweepPoint(f"{row.recipe}-split{split}", recipe_path, tuple(as_override(s) for s in settings),
                               {"method": row.recipe, "setting": "-", "split": str(split)},
                               table_shots(table_name) if row.protocol == "bcl" else ("full",),
                               random_init=table.baseline and row == table.rows[0])
            point.recipe()  # every run's recipe checked before any starts
            points.append(point)
    return SweepPlan(Path(f"fastlt reproduce {table_name}"), tuple(points))


def reproduce(table_name: str, store: Path, out_dir: Path, splits: tuple[int, ...] = (1,), epochs: int | None = None,
              overrides: tuple[str, ...] = (), engine: Engine | None = None, precision: str = "auto") -> Path:
    """Pretrain, evaluate and tabulate ``table_name`` (cifar100, cifar10, imagenet100, digits) as a sweep on
    ``engine`` (default: every GPU, else the CPU); returns the Markdown file."""
    if table_name not in TABLES:
        raise FastltError(f"reproduce: unknown table {table_name!r} (expected one of {', '.join(TABLES)})")
    table = TABLES[table_name]
    if table.split_file == "" and splits != (1,):
        raise FastltError(f"reproduce {table_name}: has one split only, got --splits {','.join(map(str, splits))}")
    if not (store / "meta.json").is_file():
        raise FastltError(f"{store}: not a fastlt store (no meta.json); convert the data set first")
    engine = engine or Engine.of(None, None, 1, None)
    plan = reproduction_plan(table_name, store, splits, epochs, overrides, precision)
    sweep_dir = out_dir / table.folder
    started = time.perf_counter()
    try:
        swept = run_plan(plan, sweep_dir, engine)
    except RunStopped as stop:  # the same command picks up every stage where it stopped
        raise RunStopped(stop.what, f"run the same `fastlt reproduce {table_name}` command again to continue "
                                    "(finished runs and reports are kept)", stop.signum) from None
    results: dict[tuple[int, str], dict[str, Any]] = {}
    shots = table_shots(table_name)
    for point, (split, row) in zip(plan.points, ((s, r) for s in splits for r in table.rows)):
        run_dir = run_dir_of(sweep_dir, point.name)
        results[(split, row.recipe)] = row_results(row, point.recipe(), run_dir, shots)
        logged = epochs_logged(run_dir)
        results[(split, row.recipe)] |= {"_epochs": len(logged), "_seconds": sum(logged)}
    # The table and its plots (the sweep's, of every run) are rebuilt on every invocation: running again is how it
    # resumes.
    markdown = results_markdown(table_name, table, splits, results, shots, time.perf_counter() - started)
    markdown += plots_markdown(swept.plots, out_dir, results)
    out = out_dir / f"{table.folder}.md"
    write_text_atomic(out, markdown)
    return out


def plots_markdown(plots: PlotResult, out_dir: Path, results: dict[tuple[int, str], dict]) -> str:
    """The training curves of all runs, and each run's per-class accuracy, linked relative to the table."""
    lines = ["", "## Plots", ""]
    lines += [f"![{path.stem}]({path.relative_to(out_dir)})" for path in plots.written]
    if plots.skipped_line():
        lines.append(f"\n{plots.skipped_line()}")
    lines.append("")
    for (split, recipe), values in results.items():
        first = Path(values["_reports"][0]) / PER_CLASS_PNG
        if first.is_file():
            lines.append(f"![{recipe}, split {split}: per-class accuracy]({first.relative_to(out_dir)})")
    return "\n".join(lines) + "\n"


def _mean_std(values: list[float]) -> str:
    return f"{values[0]:.2f}" if len(values) == 1 else f"{np.mean(values):.2f} +- {np.std(values):.2f}"


def results_markdown(table_name: str, table: Table, splits: tuple[int, ...], results: dict[tuple[int, str], dict],
                     shots: tuple[str, ...], seconds: float) -> str:
    """Our numbers (mean +- std over splits) beside the published ones, with the difference."""
    lines = [f"# Reproduction: {table_name} ({table.folder}), split(s) {', '.join(map(str, splits))}", "",
             f"Published numbers: {table.source}.", ""]
    for protocol, columns in (("bcl", shots), ("ts", TS_COLUMNS)):
        rows = [row for row in table.rows if row.protocol == protocol]
        if not rows:
            continue
        title = "BCL linear probe (overall test accuracy)" if protocol == "bcl" else \
            "Temperature-Schedules protocol (mean per-class accuracy)"
        lines += [f"## {title}", "", "| method | " + " | ".join(
            f"{c} ours | {c} published | {c} diff" for c in columns) + " |",
            "|---|" + "---:|---:|---:|" * len(columns)]
        for row in rows:
            cells = []
            for column in columns:
                ours = [results[(split, row.recipe)].get(column) for split in splits]  # None: not evaluated
                published = row.published.get(column)
                measured = None not in ours
                diff = f"{np.mean(ours) - published:+.2f}" if published is not None and measured else "-"
                cells.append(f"{_mean_std(ours) if measured else '-'} | "
                             f"{published if published is not None else '-'} | {diff}")
            lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
        baselines = [values["random-init"] for values in results.values() if "random-init" in values]
        if protocol == "bcl" and baselines:
            lines.append("| random init (same architecture) | " + " | ".join(
                f"{_mean_std([b[c] for b in baselines])} | - | -" for c in columns) + " |")
        lines.append("")
    if any(row.protocol == "bcl" for row in table.rows):
        lines += ["## Many / medium / few (full-shot linear probe)", "", "| method | many | medium | few |",
                  "|---|---:|---:|---:|"]
        for row in (r for r in table.rows if r.protocol == "bcl"):
            groups = [results[(split, row.recipe)]["groups"] for split in splits]
            lines.append(f"| {row.label} | " + " | ".join(
                _mean_std([g[name] for g in groups]) for name in ("many", "medium", "few")) + " |")
        baselines = [values["random-init"]["groups"] for values in results.values() if "random-init" in values]
        if baselines:
            lines.append("| random init | " + " | ".join(
                _mean_std([g[name] for g in baselines]) for name in ("many", "medium", "few")) + " |")
        lines.append("")
    lines += ["## Runs", "", "| run | epochs | pretraining | reports |", "|---|---:|---:|---|"]
    for (split, recipe), values in results.items():
        lines.append(f"| {recipe}, split {split} | {values['_epochs']} | {values['_seconds']:.0f} s | "
                     + ", ".join(f"`{path}`" for path in values["_reports"]) + " |")
    lines += ["", "Pretraining is the sum of the logged epoch times (the machine is in each run's run.json). "
              f"This invocation took {seconds / 60:.1f} min in all; finished stages are not repeated."]
    return "\n".join(lines) + "\n"
