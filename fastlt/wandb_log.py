"""The Weights & Biases run of a fastlt run: its metrics, recipe, hardware choices and evaluation reports.

With ``train.wandb = true`` the trainer's main process logs every number of each metrics.jsonl
record at step = epoch (what TensorBoard gets), with the recipe and the hardware choices of
run.json as the W&B config; ``fastlt linear-eval`` of such a run adds each report's numbers to
the same W&B run's summary. ``train.wandb_mode`` is "offline" by default: W&B writes its files
to RUN/wandb and nothing leaves the machine until the user runs ``wandb sync`` (or sets
"online"). The W&B id is made once, from the run folder's name and a random suffix, and kept in
RUN/wandb/fastlt-run-id, so a resume and an evaluation continue the same W&B run
(``resume="allow"``) even after the folder moved.

Train and evaluate both use this module, so it sits below them (tests/test_layout.py).
"""
from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from fastlt.errors import FastltError
from fastlt.files import write_text_atomic
from fastlt.recipe import Recipe

WANDB_FOLDER = "wandb"
ID_FILE = "fastlt-run-id"


def require_wandb() -> Any:
    """The wandb module, or a one-line error saying how to install the optional package."""
    try:
        import wandb
    except ImportError:
        raise FastltError("train.wandb: the wandb package is not installed "
                          "(pip install 'fastlt[wandb]', or pip install wandb)") from None
    return wandb


def wandb_id(run_dir: Path) -> str:
    """The run's W&B id: read from RUN/wandb, or made there the first time (W&B ids allow no / \\ # ? % :)."""
    stored = run_dir / WANDB_FOLDER / ID_FILE
    if stored.is_file():
        return stored.read_text(encoding="utf-8").strip()
    made = f"{re.sub(r'[^A-Za-z0-9_.-]', '-', run_dir.name)[:50]}-{uuid.uuid4().hex[:8]}"
    stored.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stored, made + "\n")
    return made


def open_run(run_dir: Path, recipe: Recipe, config: dict[str, Any] | None = None) -> Any:
    """The run's W&B run, new or continued, with its files in RUN/wandb; W&B's refusals (online without a login,
    say) are one line.

    W&B does not capture the console: fastlt's progress line and metrics.jsonl already say it all.
    """
    wandb = require_wandb()
    settings = recipe.train
    try:
        return wandb.init(project=settings.wandb_project, group=settings.wandb_group or None, name=run_dir.name,
                          id=wandb_id(run_dir), resume="allow", dir=str(run_dir), mode=settings.wandb_mode,
                          config=config, settings=wandb.Settings(console="off"))
    except wandb.errors.Error as error:
        raise FastltError(f"train.wandb: W&B refused to start the run ({' '.join(str(error).split())})") from None


def numbers(values: dict[str, Any]) -> dict[str, float | int]:
    """The int and float values of a record (bools and None are not measurements)."""
    return {key: value for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


class WandbLog:
    """Every number of each metrics.jsonl record at step = epoch, like fastlt.train.monitor.TensorBoardLog.

    A resume continues the W&B run; online, W&B drops the steps it has already seen, so the
    epochs trained again after a crash keep their first values there (metrics.jsonl has the new ones).
    """

    def __init__(self, run_dir: Path, recipe: Recipe, hardware: dict[str, Any]):
        self.run = open_run(run_dir, recipe, {**recipe.to_dict(), "hardware": hardware})

    def write(self, record: dict[str, Any]) -> None:
        self.run.log(numbers({key: value for key, value in record.items() if key != "epoch"}),
                     step=int(record["epoch"]))

    def close(self) -> None:
        self.run.finish()


def log_reports(run_dir: Path, recipe: Recipe, reports: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Add evaluation reports ({report folder name: eval.json's "reports"}) to the run's W&B summary, as
    eval/<report folder>/<row>/<measure>."""
    run = open_run(run_dir, recipe)
    try:
        run.summary.update({f"eval/{folder}/{row}/{key}": value for folder, rows in reports.items()
                            for row, report in rows.items() for key, value in numbers(report).items()})
    finally:
        run.finish()
