"""Checkpoints: atomic writes, a format tag, and loading that explains mismatches in one line."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastlt.errors import FastltError
from fastlt.files import replace_atomically

FORMAT = "fastlt-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write payload (plus the format tag) atomically: a crash mid-write keeps the previous checkpoint."""
    replace_atomically(path, lambda handle: torch.save({"format": FORMAT, "version": VERSION, **payload}, handle))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a fastlt checkpoint on the CPU; anything else is a one-line FastltError."""
    if not path.is_file():
        raise FastltError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for corrupt files
        raise FastltError(f"{path}: not a readable checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FastltError(f"{path}: not a fastlt checkpoint")
    if payload.get("version") != VERSION:
        raise FastltError(f"{path}: checkpoint version {payload.get('version')} is not supported (expected {VERSION})")
    return payload


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
