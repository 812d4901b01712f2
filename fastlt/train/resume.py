"""What a resume may change: a run's history is never rewritten.

A resumed run continues the computation its checkpoint recorded. The one change that
alters it and is allowed is a longer schedule (``train.epochs`` up); the settings in
``CHANGEABLE_ON_RESUME`` only change how the run is watched, stored or executed. The
store and split may move to other paths, but their contents must be the ones trained on
(``fastlt.data.store.check_same_data``).
"""
from __future__ import annotations

from typing import Any

from fastlt.errors import FastltError

# Settings a resume may change because they leave the computation as it is (docs/faults.md, "Resume").
CHANGEABLE_ON_RESUME = {
    "train.progress", "train.log_every", "train.checkpoint_every", "train.checkpoint_minutes", "train.keep_every",
    "train.out_dir", "train.name",
    "train.monitor_every", "train.tensorboard",  # watching: the held-out kNN and TensorBoard read, never write
    "train.wandb", "train.wandb_project", "train.wandb_mode", "train.wandb_group",  # watching, as TensorBoard
    "train.device",  # another device of the recorded type (cuda:1 for cuda:0); the type itself is checked
    "train.compile", "train.compile_views", "train.memory_format",  # the same maths, other kernels (float rounding may differ)
    "data.store", "data.split",  # moved files: their contents are compared with the checkpoint's record
}


def flatten(recipe: dict[str, Any]) -> dict[str, Any]:
    """{"train": {"epochs": 2}} -> {"train.epochs": 2}."""
    return {f"{section}.{key}": value for section, table in recipe.items() for key, value in table.items()}


def check_recipe_change(recorded: dict[str, Any], requested: dict[str, Any], epochs_done: int, where: str) -> None:
    """Refuse any change from the checkpoint's recipe except the allowed ones, in one line."""
    old, new = flatten(recorded), flatten(requested)
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key) or key in CHANGEABLE_ON_RESUME:
            continue
        if key == "train.epochs":
            if new[key] < old[key]:
                raise FastltError(f"{where}: train.epochs can only be extended on resume ({old[key]} -> {new[key]})")
            continue
        raise FastltError(
            f"{where}: resuming with {key} = {new.get(key)!r} would change a run trained with {old.get(key)!r} "
            f"for {epochs_done} epochs; start a new run instead"
        )
