"""The run folder: its name, what a run writes into it, the room its checkpoints need, and the metrics lines."""
from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from fastlt.checkpoint import CHECKPOINTS, LAST, PREVIOUS
from fastlt.errors import FastltError
from fastlt.files import remove_temporaries, write_text_atomic
from fastlt.progress import say
from fastlt.recipe import Recipe
from fastlt.train.monitor import TENSORBOARD_FOLDER
from fastlt.train.run_state import RunState

CHECKPOINT_NAME = f"{CHECKPOINTS}/{LAST}"

ROOM_FACTOR = 3  # checkpoints on disk at once while one is written: last, previous and the new one


def new_run_dir(recipe: Recipe, recipe_path: str, restart_unstarted: bool = False) -> Path:
    """runs/<name>, by default the recipe's stem and a timestamp; never an existing folder, except, with
    ``restart_unstarted``, one a killed start left before its first checkpoint (its files are fastlt's own)."""
    name = recipe.train.name or f"{Path(recipe_path).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(recipe.train.out_dir) / name
    if run_dir.exists() and restart_unstarted:
        remove_unstarted_run(run_dir)
    if run_dir.exists():
        raise FastltError(f"{run_dir}: run folder exists already (use --resume to continue it, or another name)")
    return run_dir

RUN_FILES = ("config.json", "run.json", "metrics.jsonl", CHECKPOINTS, TENSORBOARD_FOLDER)  # all a run writes


def run_started(run_dir: Path) -> bool:
    """Whether the run folder holds a checkpoint to resume from (last.pt, or previous.pt after a failed rename)."""
    folder = Path(run_dir) / CHECKPOINTS
    return (folder / LAST).is_file() or (folder / PREVIOUS).is_file()


def remove_unstarted_run(run_dir: Path) -> None:
    """Delete a run folder that has no checkpoint, if it holds nothing but what fastlt writes in a run (else a
    one-line refusal: nothing a user put there is deleted)."""
    if not run_dir.is_dir():
        return
    foreign = [path.name for path in run_dir.iterdir() if path.name not in RUN_FILES]
    checkpoints = run_dir / CHECKPOINTS
    if checkpoints.is_dir():
        remove_temporaries(checkpoints)
        foreign += [f"{CHECKPOINTS}/{path.name}" for path in checkpoints.iterdir()]
    if foreign:
        raise FastltError(f"{run_dir}: has no checkpoint to resume, and holds {foreign[0]}, which a run does not "
                          "write; move it away or choose another train.name")
    say(f"{run_dir}: no checkpoint yet (stopped before its first); starting the run again")
    shutil.rmtree(run_dir)


def checkpoint_bytes(state: RunState) -> int:
    """About the size of one checkpoint: the method's tensors and the optimiser's one buffer per parameter."""
    tensors = list(state.method.state_dict().values()) + [p for p in state.method.parameters() if p.requires_grad]
    return sum(t.numel() * t.element_size() for t in tensors)


def make_run_dir(run_dir: Path, checkpoint_size: int) -> None:
    """Create the run folder, refusing one that cannot be written or a disk without room for the
    checkpoints, before any training."""
    try:
        run_dir.mkdir(parents=True)
    except OSError as error:
        raise FastltError(f"{run_dir}: cannot create the run folder ({error.strerror or error})") from None
    needed, free = ROOM_FACTOR * checkpoint_size, shutil.disk_usage(run_dir).free
    if free < needed:
        run_dir.rmdir()
        raise FastltError(f"{run_dir.parent}: {free / 2**20:.0f} MiB free, and the run needs about "
                          f"{needed / 2**20:.0f} MiB for its checkpoints (train.out_dir elsewhere?)")


def keep_metrics_until(path: Path, epoch: int) -> None:
    """Drop metrics lines of epochs after the checkpoint (they will be run again), and a last line a killed
    write cut short, atomically."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not text.endswith("\n"):
        lines.pop()  # torn: the process died inside the append
    kept = [line for line in lines if json.loads(line)["epoch"] <= epoch]
    if kept != lines or not text.endswith("\n"):
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """One epoch's line; a full disk is a one-line error (the checkpoints are untouched)."""
    try:
        with path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
    except OSError as error:
        raise FastltError(f"{path}: cannot append the epoch's metrics ({error.strerror or error}); "
                          "the checkpoints written before are intact") from None
