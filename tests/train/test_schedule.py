"""The learning rate of every optimiser step against a real LambdaLR driven as each reference drives it.

The references' lambda is transcribed here (BCL utils.py:50, SDCLR/TS train_simCLR.py, FlatCLR
optimizer/cos_anneal.py; LoTaR's train.py:70 writes ``<=`` at the warm-up's end, the same value there).
SDCLR, BCL and TS call ``scheduler.step()`` before ``optimizer.step()``; LoTaR (train.py:111-112) and
FlatCLR (flatclr.py:138-139) after it.
"""
import json

import numpy as np
import pytest
import torch
from conftest import lrs_as_driven

from fastlt.recipe import recipe_from_dict
from fastlt.train.lars import Lars
from fastlt.train.schedule import peak_lr, warmup_cosine_lr
from fastlt.train.trainer import pretrain, resume_run


def reference_lambda(step, total_steps, lr_max, lr_min, warmup_steps):
    if step < warmup_steps:
        return lr_max * step / warmup_steps
    return lr_min + (lr_max - lr_min) * 0.5 * (1 + np.cos((step - warmup_steps) / (total_steps - warmup_steps) * np.pi))


def reference_lrs(total_steps, warmup_steps, base_lr, final_lr, scheduler_first):
    """The lr each optimiser step of a reference run sees, read from the optimiser as it steps."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=base_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: reference_lambda(
        step, total_steps, 1, final_lr / base_lr, warmup_steps))
    return lrs_as_driven(optimizer, scheduler, total_steps, scheduler_first)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
@pytest.mark.parametrize("offset, scheduler_first", [(1, True), (0, False)], ids=["before (SDCLR, BCL, TS)",
                                                                                 "after (LoTaR, FlatCLR)"])
@pytest.mark.parametrize("total, warmup, base, final", [(60, 10, 0.5, 1e-6), (37, 7, 0.6, 1e-6), (12, 0, 1.2, 1e-3)])
def test_every_step_runs_at_the_references_lr(offset, scheduler_first, total, warmup, base, final):
    expected = reference_lrs(total, warmup, base, final, scheduler_first)
    got = [warmup_cosine_lr(step, total, warmup, base, final, offset) for step in range(total)]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_the_landmarks_of_each_order():
    total, warmup, base, final = 100, 10, 0.5, 1e-6
    before = [warmup_cosine_lr(s, total, warmup, base, final, 1) for s in range(total)]
    after = [warmup_cosine_lr(s, total, warmup, base, final, 0) for s in range(total)]
    assert before[0] == pytest.approx(base / warmup) and after[0] == 0.0  # LoTaR's first step does not move
    assert before[warmup - 1] == pytest.approx(base) and after[warmup] == pytest.approx(base)
    assert before.count(max(before)) == 1  # the peak is held for one step, not two
    assert before[-1] == pytest.approx(final) and after[-1] > final  # "after" stops one step short of the floor
    assert after[1:] == pytest.approx(before[:-1], rel=1e-12)


# FlatCLR's README.md:38-46: the lr of each batch size under its two scaling rules (0.3 linear, 0.075 sqrt), two decimals.
FLATCLR_README_LRS = {128: (0.15, 0.85), 256: (0.3, 1.20), 512: (0.6, 1.70), 1024: (1.2, 2.40), 2048: (2.4, 3.39),
                      4096: (4.8, 4.80), 8192: (9.6, 6.79)}


@pytest.mark.parametrize("batch", sorted(FLATCLR_README_LRS))
def test_lr_scaling_gives_flatclrs_table(batch):
    linear, sqrt = FLATCLR_README_LRS[batch]
    assert round(peak_lr(0.3, batch, "linear"), 2) == linear and round(peak_lr(0.075, batch, "sqrt"), 2) == sqrt
    assert peak_lr(0.6, batch, "none") == 0.6  # what every reference's code passes: the lr as given


def tiny_recipe(store, out_dir, name, offset, optimizer="sgd", scaling="none"):
    return recipe_from_dict({
        "data": {"store": str(store)},
        "model": {"width": 4, "projector_hidden": 16, "projector_out": 8},
        "views": {"size": 16},
        "optim": {"name": optimizer, "lr": 0.3, "warmup_epochs": 1.5, "final_lr": 1e-3, "lr_step_offset": offset,
                  "lr_scaling": scaling},
        "train": {"epochs": 3, "batch_size": 128, "out_dir": str(out_dir), "progress": False, "precision": "fp32",
                  "device": "cpu", "compile": "off", "compile_views": "off", "name": name},
    }, "test")


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
@pytest.mark.parametrize("offset, optimizer, scaling", [(1, "sgd", "none"), (0, "lars", "sqrt")])
def test_the_trainer_steps_at_the_reference_lr_also_across_a_resume(digits_store, tmp_path, monkeypatch, offset,
                                                                   optimizer, scaling):
    seen = []
    step_class = Lars if optimizer == "lars" else torch.optim.SGD
    original = step_class.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(step_class, "step", spy)
    run = pretrain(tiny_recipe(digits_store, tmp_path, "whole", offset, optimizer, scaling))
    whole = list(seen)
    seen.clear()
    resume_run(pretrain(tiny_recipe(digits_store, tmp_path, "halves", offset, optimizer, scaling), until_epoch=1))
    steps_per_epoch = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["step"]
    total = 3 * steps_per_epoch
    assert len(whole) == total and seen == whole  # the resumed run continues the schedule exactly
    base = 0.3 * (128 ** 0.5 if scaling == "sqrt" else 1)  # FlatCLR README's rule: lr x sqrt(batch)
    expected = reference_lrs(total, round(1.5 * steps_per_epoch), base, 1e-3, scheduler_first=offset == 1)
    assert whole == pytest.approx(expected, rel=1e-12, abs=1e-15)
