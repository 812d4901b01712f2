"""Checkpoints never run code: they load with weights_only=True, and anything needing more is refused."""
import os

import numpy as np
import pytest
import torch

from fastlt.errors import FastltError
from fastlt.train.checkpoint import VERSION, load_checkpoint, save_checkpoint


class WritesAFileWhenUnpickled:
    """What a malicious checkpoint carries: unpickling it calls open(path, "w")."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "fastlt-checkpoint", "version": VERSION, "model": WritesAFileWhenUnpickled(marker)}, evil)
    with pytest.raises(FastltError, match="refusing to load: the file would run code") as error:
        load_checkpoint(evil)
    assert "\n" not in str(error.value) and str(evil) in str(error.value)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the control: loading it unsafely does run the code
    assert marker.exists()


def test_a_version_1_checkpoint_is_refused_as_predating_safe_checkpoints(tmp_path):
    old = tmp_path / "v1.pt"
    torch.save({"format": "fastlt-checkpoint", "version": 1, "rng": {"numpy": np.random.get_state()}}, old)
    with pytest.raises(FastltError, match="predates safe checkpoints"):
        load_checkpoint(old)


def test_a_checkpoint_round_trips_with_weights_only(tmp_path):
    path = tmp_path / "ok.pt"
    generator = torch.Generator().manual_seed(3)
    payload = {"epoch": 2, "recipe": {"train": {"epochs": 5}}, "model": {"w": torch.ones(2, dtype=torch.bool)},
               "rng": {"data": generator.get_state()}, "scaler": {}}
    save_checkpoint(path, payload)
    loaded = torch.load(path, weights_only=True)  # what load_checkpoint does
    assert load_checkpoint(path)["epoch"] == 2 and torch.equal(loaded["rng"]["data"], generator.get_state())
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary file left


def test_other_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FastltError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(FastltError, match="not a fastlt checkpoint"):
        load_checkpoint(other)
    with pytest.raises(FastltError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
