"""Reproduce a published table: pretrain its presets on its splits, evaluate each with its paper's protocol,
and write our numbers beside the published ones.

Every stage leaves a result on disk that the next invocation finds: a finished run is not
trained again, a stopped one resumes from its checkpoint, an existing report is not
recomputed. So `make reproduce-cifar100` can be stopped at any point and run again.
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
from fastlt.evaluate.plots import PlotResult, plot_runs
from fastlt.evaluate.protocol import linear_eval
from fastlt.evaluate.report import PER_CLASS_PNG
from fastlt.files import write_text_atomic
from fastlt.progress import say
from fastlt.recipe import Recipe, find_recipe, load_recipe
from fastlt.checkpoint import CHECKPOINTS, LAST, PREVIOUS, load_run_checkpoint
from fastlt.hardware import resolve_device, resolve_precision
from fastlt.train.trainer import pretrain, resume_run


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


@dataclass
class Clock:
    """Measured epoch times of this invocation, for the expected time of what is left."""

    epoch_seconds: list[float] = field(default_factory=list)

    def remaining(self, epochs_left: int) -> str:
        if not self.epoch_seconds:
            return "unknown"
        seconds = float(np.mean(self.epoch_seconds)) * epochs_left
        if seconds >= 3600:
            return f"{seconds / 3600:.1f} h"
        return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def first_epoch_seconds(run_dir: Path) -> float:
    """The first epoch's wall time as the trainer logged it."""
    first = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[0]
    return float(json.loads(first)["epoch_seconds"])


def epochs_done(run_dir: Path) -> int:
    """Epochs the run's last checkpoint holds (previous.pt where last.pt is unreadable)."""
    return int(load_run_checkpoint(run_dir, say)[1]["epoch"])


def train_row(recipe_path: Path, run_dir: Path, overrides: list[str], epochs: int, clock: Clock,
              epochs_after: int) -> None:
    """Pretrain one run to ``epochs``: start it with one epoch to time it and go on, or resume it where it stopped."""
    started_here = not run_dir.exists()
    if started_here:
        recipe = load_recipe(recipe_path, [*overrides, f"train.out_dir={json.dumps(str(run_dir.parent))}",
                                           f"train.name={json.dumps(run_dir.name)}"])
        pretrain(recipe, str(recipe_path), until_epoch=1)
        clock.epoch_seconds.append(first_epoch_seconds(run_dir))
        say(f"{run_dir.name}: first epoch {clock.epoch_seconds[-1]:.1f} s; expected time for this run and the "
            f"ones after it on this device: {clock.remaining(epochs - 1 + epochs_after)}")
    elif not any((run_dir / CHECKPOINTS / name).is_file() for name in (LAST, PREVIOUS)):
        raise FastltError(f"{run_dir}: run folder without a checkpoint; remove it to start the run again")
    if epochs_done(run_dir) < epochs:
        resume_run(run_dir, continuing=started_here)


def report_folders(recipe: Recipe, row: Row, shots: tuple[str, ...]) -> dict[str, str]:
    """Column group -> the report folder name ``fastlt linear-eval`` gives it (docs/evaluating-runs.md)."""
    if row.protocol == "ts":
        return {"ts": f"ts-{split_name(recipe.data.split)}"}
    full = split_name(recipe.eval.train_split)
    return {shot: f"bcl-linear-{full}" if shot == "full" else f"bcl-linear-{shot}shot" for shot in shots}


def evaluate_row(row: Row, recipe: Recipe, run_dir: Path, shots: tuple[str, ...], device: str,
                 precision: str, random_init: bool = False) -> dict[str, Any]:
    """Our numbers for a row's columns from its reports, running the evaluation only where a report is missing."""
    folders = report_folders(recipe, row, shots)
    missing = tuple(shot for shot, name in folders.items() if not (run_dir / "eval" / name / "eval.json").is_file())
    if missing:
        linear_eval(run_dir, device=device, precision=precision, overrides={"protocol": row.protocol},
                    shots=missing if row.protocol == "bcl" else ("full",), random_init=random_init)
    documents = {shot: json.loads((run_dir / "eval" / name / "eval.json").read_text(encoding="utf-8"))
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


def reproduce(table_name: str, store: Path, out_dir: Path, splits: tuple[int, ...] = (1,), epochs: int | None = None,
              overrides: tuple[str, ...] = (), device: str = "auto", precision: str = "auto") -> Path:
    """Pretrain, evaluate and tabulate ``table_name`` (cifar100, cifar10, imagenet100, digits); returns the
    Markdown file."""
    if table_name not in TABLES:
        raise FastltError(f"reproduce: unknown table {table_name!r} (expected one of {', '.join(TABLES)})")
    table = TABLES[table_name]
    if table.split_file == "" and splits != (1,):
        raise FastltError(f"reproduce {table_name}: has one split only, got --splits {','.join(map(str, splits))}")
    if not (store / "meta.json").is_file():
        raise FastltError(f"{store}: not a fastlt store (no meta.json); convert the data set first")
    eval_device = resolve_device(device, f"--device {device}")  # before the recipes, which take both as they are
    eval_precision = resolve_precision(precision, eval_device, f"--precision {precision}").name
    runs_dir = out_dir / table.folder / "runs"
    shots = BCL_COLUMNS if table_name != "digits" else ("full",)
    plan = []
    for split in splits:
        for row in table.rows:
            recipe_path = find_recipe(f"{table.folder}/{row.recipe}")
            settings = [f"data.store={json.dumps(str(store.resolve()))}", f"train.device={json.dumps(device)}",
                        f"train.precision={json.dumps(precision)}", *overrides]
            if table.split_file:
                split_path = (recipe_path.parent / table.split_file.format(split=split)).resolve()
                settings.append(f"data.split={json.dumps(str(split_path))}")
            if epochs is not None:
                settings.append(f"train.epochs={epochs}")
            recipe = load_recipe(recipe_path, settings)
            plan.append((split, row, recipe_path, settings, recipe, runs_dir / f"{row.recipe}-split{split}"))

    clock = Clock()
    started = time.perf_counter()
    results: dict[tuple[int, str], dict[str, Any]] = {}
    for index, (split, row, recipe_path, settings, recipe, run_dir) in enumerate(plan):
        later = sum(entry[4].train.epochs for entry in plan[index + 1:])
        try:
            train_row(recipe_path, run_dir, settings, recipe.train.epochs, clock, later)
        except RunStopped as stop:  # the same command picks up every stage where it stopped
            raise RunStopped(stop.what, f"run the same `fastlt reproduce {table_name}` command again to continue "
                                        "(finished runs and reports are kept)", stop.signum) from None
        results[(split, row.recipe)] = evaluate_row(row, recipe, run_dir, shots, str(eval_device), eval_precision,
                                                    random_init=table.baseline and row == table.rows[0])
        epochs_logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        results[(split, row.recipe)] |= {"_epochs": len(epochs_logged),
                                         "_seconds": sum(entry["epoch_seconds"] for entry in epochs_logged)}
    # The table and its plots are rebuilt from the runs on every invocation: running again is how it resumes.
    plots = plot_runs([entry[5] for entry in plan], out_dir / table.folder / "plots", overwrite=True)
    markdown = results_markdown(table_name, table, splits, results, shots, time.perf_counter() - started)
    markdown += plots_markdown(plots, out_dir, results)
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
