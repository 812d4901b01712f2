"""Checkpoints: atomic writes, a format tag, and loading that can never run code from the file.

A checkpoint holds tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(weights_only=True)``: a file from elsewhere cannot execute anything. A file
that needs more (arbitrary pickled objects, or the pickled numpy RNG state of version 1)
is refused with one line, without unpickling its objects.

A run keeps ``checkpoints/last.pt`` and the one before it, ``previous.pt`` (the old last is
renamed only once the new one is complete), plus a milestone ``epoch<N>.pt`` every
``train.keep_every`` epochs. A last.pt that is missing or unreadable (a disk that failed
under it) falls back to previous.pt, with a warning.
"""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fastlt.errors import FastltError
from fastlt.files import remove_temporaries, replace_atomically

FORMAT = "fastlt-checkpoint"
VERSION = 2  # 1 pickled numpy state and needed weights_only=False
_NUMPY_GLOBALS = ("numpy.", "_codecs.encode")  # what a version-1 checkpoint's numpy RNG state pickles


CHECKPOINTS = "checkpoints"  # the folder in a run
LAST, PREVIOUS = "last.pt", "previous.pt"


def save_checkpoint(path: Path, payload: dict[str, Any], keep_old_as: Path | None = None) -> None:
    """Write payload (plus the format tag) atomically: a crash mid-write keeps the previous checkpoint
    (renamed to ``keep_old_as`` once the new one is complete, when given)."""
    replace_atomically(path, lambda handle: torch.save({"format": FORMAT, "version": VERSION, **payload}, handle),
                       keep_old_as)


def save_run_checkpoint(run_dir: Path, payload: dict[str, Any], milestone: bool = False) -> Path:
    """The run's new last.pt, the old one kept as previous.pt; a milestone also stays as epoch<N>.pt."""
    folder = Path(run_dir) / CHECKPOINTS
    last = folder / LAST
    try:
        save_checkpoint(last, payload, keep_old_as=folder / PREVIOUS)
        if milestone:
            kept = folder / f"epoch{payload['epoch']}.pt"
            kept.unlink(missing_ok=True)
            try:
                os.link(last, kept)  # the same bytes, no copy: last.pt is only ever renamed, never rewritten
            except OSError:
                shutil.copyfile(last, kept)
    except OSError as error:
        raise FastltError(f"{last}: cannot write the checkpoint ({error.strerror or error}); the checkpoints "
                          f"written before are intact") from None
    return last


def load_run_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The run's last.pt, or previous.pt (with a warning) when last.pt is missing or unreadable.

    Temporary files a killed write left in the run are removed first.
    """
    folder = Path(run_dir) / CHECKPOINTS
    remove_temporaries(folder)
    remove_temporaries(Path(run_dir))
    try:
        return folder / LAST, load_checkpoint(folder / LAST)
    except FastltError as error:
        previous = folder / PREVIOUS
        if not previous.is_file():
            raise
        payload = load_checkpoint(previous)
        warn(f"warning: {error}; using {previous} (epoch {payload['epoch']}) instead")
        return previous, payload


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a fastlt checkpoint on the CPU with weights_only=True; anything else is a one-line FastltError."""
    path = Path(path)
    if not path.is_file():
        raise FastltError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FastltError(f"{path}: {_why_unsafe(path)}") from None
    except Exception as error:  # torch raises many types for corrupt files
        raise FastltError(f"{path}: not a readable checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FastltError(f"{path}: not a fastlt checkpoint")
    if payload.get("version") != VERSION:
        raise FastltError(f"{path}: checkpoint version {payload.get('version')!r} is not supported (expected {VERSION})")
    return payload


def _why_unsafe(path: Path) -> str:
    """Name what a checkpoint would need to execute, read from its pickle without running it."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not even a readable archive
        needed = []
    if needed and all(name.startswith(_NUMPY_GLOBALS) for name in needed):
        return ("checkpoint predates safe checkpoints (fastlt checkpoint version 1 pickles numpy state); "
                "it cannot be loaded without allowing code execution, so it is refused")
    if not needed:
        return "not a readable checkpoint (damaged, or not a torch.save file)"
    return f"refusing to load: the file would run code when unpickled ({needed[0]}); fastlt checkpoints never need that"


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load a state dict strictly; a different architecture becomes a FastltError that says how."""
    own = module.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches, first {mismatched[0]}")
    if missing:
        problems.append(f"{len(missing)} missing keys, first {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, first {unexpected[0]}")
    if problems:
        raise FastltError(f"{path}: checkpoint is for a different model ({'; '.join(problems)})")
    module.load_state_dict(state)
