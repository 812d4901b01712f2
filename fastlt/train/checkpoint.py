"""Checkpoints: atomic writes, a format tag, and loading that can never run code from the file.

A checkpoint holds tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(weights_only=True)``: a file from elsewhere cannot execute anything. A file
that needs more (arbitrary pickled objects, or the pickled numpy RNG state of version 1)
is refused with one line, without unpickling its objects.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastlt.errors import FastltError
from fastlt.files import replace_atomically

FORMAT = "fastlt-checkpoint"
VERSION = 2  # 1 pickled numpy state and needed weights_only=False
_NUMPY_GLOBALS = ("numpy.", "_codecs.encode")  # what a version-1 checkpoint's numpy RNG state pickles


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write payload (plus the format tag) atomically: a crash mid-write keeps the previous checkpoint."""
    replace_atomically(path, lambda handle: torch.save({"format": FORMAT, "version": VERSION, **payload}, handle))


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
