"""A run's recorded channels_last falls back to contiguous on resume only where channels_last is unsafe on the
resuming machine (docs/faults.md, "Resume"), and says so: on stderr and in run.json's record of the resume.

The run is width 16 (no strided 1x1 convolution narrower than 16 channels: channels_last is safe on every CPU,
so ``auto`` records it); the resuming machine's probe, fastlt.hardware.memory_format_hazard, is replaced by
one that reports a hazard, as an x86 CPU does for a narrow model recorded on a machine without one.
"""
from __future__ import annotations

import json
from pathlib import Path

import fastlt.train.snapshot as snapshot
from fastlt.methods.base import ContrastiveMethod
from fastlt.recipe import recipe_from_dict
from fastlt.train.trainer import pretrain, resume_run

DIGITS_LT = Path(__file__).resolve().parents[2] / "splits" / "digits_lt" / "ratio10_seed1.npy"
HAZARD = "layer2.0.shortcut.0 is unsafe in channels_last (the test's stand-in probe)"


def test_recorded_channels_last_falls_back_to_contiguous_only_where_unsafe(digits_store, tmp_path, monkeypatch,
                                                                           capsys):
    run = pretrain(recipe_from_dict({
        "data": {"store": str(digits_store), "split": str(DIGITS_LT)},
        "model": {"width": 16, "projector_hidden": 32, "projector_out": 16},
        "views": {"size": 16},
        "optim": {"lr": 0.1, "warmup_epochs": 1},
        "train": {"epochs": 3, "batch_size": 128, "out_dir": str(tmp_path), "name": "run", "progress": False,
                  "precision": "fp32", "device": "cpu", "compile": "off", "memory_format": "auto"},
    }, "test"), until_epoch=1)
    assert json.loads((run / "run.json").read_text())["hardware"]["memory_format"] == "channels_last"
    formats = []
    set_memory_format = ContrastiveMethod.set_memory_format
    monkeypatch.setattr(ContrastiveMethod, "set_memory_format",
                        lambda method, name: (formats.append(name), set_memory_format(method, name))[1])

    resume_run(run, until_epoch=2)  # the real probe: safe here, so the recorded layout
    assert "contiguous memory" not in capsys.readouterr().err
    with monkeypatch.context() as unsafe_here:
        unsafe_here.setattr(snapshot, "memory_format_hazard", lambda model, device: HAZARD)
        resume_run(run)
    warning = f"warning: {run}: resuming in contiguous memory, the recorded channels_last is unsafe here: {HAZARD}"
    assert warning in capsys.readouterr().err.splitlines()
    assert formats == ["channels_last", "contiguous"]
    record = json.loads((run / "run.json").read_text())
    assert [resume["hardware"]["memory_format"] for resume in record["resumes"]] == ["channels_last", "contiguous"]
    assert [resume["hardware"]["reasons"]["memory_format"] for resume in record["resumes"]] == [
        "recorded at the start of the run", f"the recorded channels_last is unsafe here: {HAZARD}"]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
