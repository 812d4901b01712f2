"""Every preset trains on the built-in digits; BCL's strength reaches the views; BCL state survives resume."""
import json
import math

import numpy as np
import pytest
import torch

from fastlt.data.loader import Batch
from fastlt.data.store import Store
from fastlt.errors import FastltError
from fastlt.methods import PRESETS, Axes, build_method, resolve_axes
from fastlt.recipe import recipe_from_dict
from fastlt.checkpoint import load_checkpoint
from fastlt.train.run_folder import CHECKPOINT_NAME
from fastlt.train.trainer import pretrain, resume_run


def recipe(store, out_dir, name, method=None, **train):
    return recipe_from_dict(
        {
            "data": {"store": str(store)},
            "model": {"width": 4, "projector_hidden": 32, "projector_out": 16},
            "views": {"size": 16},  # a quarter of the pixels: what is tested here is the same at any size
            # A cosine temperature starts near temperature_max; at 1.0 a few epochs of a width-4 network barely
            # move the loss, so the schedule presets run from 0.3 here (constant presets are unaffected).
            "method": {"name": name, "pruning_ratio": 0.5, "temperature_max": 0.3, **(method or {})},
            "optim": {"lr": 0.1, "warmup_epochs": 1},
            "train": {"epochs": 5, "batch_size": 128, "out_dir": str(out_dir), "progress": False,
                      "precision": "fp32", "device": "cpu", "name": name, **train},
        },
        "test",
    )


def epochs_of(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_trains_resumes_exactly_and_logs_its_diagnostics(digits_store, tmp_path, name):
    run = pretrain(recipe(digits_store, tmp_path / "full", name))
    epochs = epochs_of(run)
    assert min(e["loss"] for e in epochs[1:]) < epochs[0]["loss"]
    half = pretrain(recipe(digits_store, tmp_path / "half", name), until_epoch=2)
    resume_run(half)
    a, b = load_checkpoint(run / CHECKPOINT_NAME)["model"], load_checkpoint(half / CHECKPOINT_NAME)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    axes = resolve_axes(recipe(digits_store, tmp_path, name))
    encoder, strength = axes.encoder, axes.view_strength
    if encoder == "self-damaging":
        assert all(abs(e["sparsity"] - 0.5) < 1e-3 for e in epochs)
    if strength != "fixed":
        for key in ("weight_mean", "weight_q10", "weight_q50", "weight_q90",
                    "weight_mean_many", "weight_mean_medium", "weight_mean_few"):
            assert key in epochs[-1], key
        assert 0.0 <= epochs[-1]["weight_q10"] <= epochs[-1]["weight_q90"] <= 1.0


def test_axes_compose_beyond_the_presets(digits_store, tmp_path):
    mixed = recipe_from_dict({"data": {"store": str(digits_store)},
                              "method": {"name": "sdclr", "view_strength": "bcl-i"}}, "test")
    assert resolve_axes(mixed) == Axes(encoder="self-damaging", view_strength="bcl-i")


def test_resume_restores_bcl_state_bit_for_bit(digits_store, tmp_path):
    full = pretrain(recipe(digits_store, tmp_path / "a", "bcl-d", epochs=3))
    half = pretrain(recipe(digits_store, tmp_path / "b", "bcl-d", epochs=3), until_epoch=2)
    resume_run(half)
    a, b = load_checkpoint(full / CHECKPOINT_NAME)["model"], load_checkpoint(half / CHECKPOINT_NAME)["model"]
    for key in ("boost.momentum_loss", "boost.seen", "boost.weights"):
        assert key in a and torch.equal(a[key], b[key]), key
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert epochs_of(full) == [dict(e, epoch_seconds=f["epoch_seconds"], images_per_second=f["images_per_second"])
                               for e, f in zip(epochs_of(half), epochs_of(full))]


def test_higher_weight_gives_stronger_views(digits_store):
    part = Store.open(digits_store).part("train")
    images = torch.from_numpy(np.array(part.images[:256])).permute(0, 3, 1, 2)
    batch = Batch(images, torch.zeros(256, dtype=torch.long), torch.arange(256))
    method = build_method(recipe_from_dict({"method": {"name": "bcl-i"}}, "test"), num_samples=256)
    baseline = method.views(images, torch.Generator().manual_seed(0))  # no boost stage input
    changes = []
    for weight in (0.0, 0.3, 1.0):
        method.boost.weights.fill_(weight)
        view, _ = method.make_views(batch, torch.Generator().manual_seed(0))
        changes.append(float((view - baseline).abs().mean()))
    assert changes[0] == 0.0  # w = 0: no op fires, the SimCLR view is untouched
    assert 0.0 < changes[1] < changes[2]


# Combinations no reference repository can run: each axis from another paper.
COMBINATIONS = [
    ("bcl-d", {"temperature_schedule": "cosine", "temperature_period": 20}),  # BCL-D with a temperature schedule
    ("sdclr", {"sample_weights": "lotar"}),  # SDCLR with LoTaR weights
    ("bcl-i", {"objective": "flatnce", "sample_weights": "lotar", "lotar_sign": -1.0}),
    ("selfcon", {"temperature_schedule": "cosine", "temperature_period": 20, "view_strength": "bcl-i"}),
]


@pytest.mark.parametrize("name, axes", COMBINATIONS, ids=[f"{n}+{'+'.join(a)}" for n, a in COMBINATIONS])
def test_cross_axis_combinations_learn_and_resume_exactly(digits_store, tmp_path, name, axes):
    full = pretrain(recipe(digits_store, tmp_path / "full", name, axes, epochs=6))
    half = pretrain(recipe(digits_store, tmp_path / "half", name, axes, epochs=6), until_epoch=3)
    resume_run(half)
    epochs = epochs_of(full)
    assert min(e["loss"] for e in epochs[1:]) < epochs[0]["loss"]
    a, b = load_checkpoint(full / CHECKPOINT_NAME)["model"], load_checkpoint(half / CHECKPOINT_NAME)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    if axes.get("temperature_schedule") == "cosine":  # t_max 20: tau falls from 0.3 towards 0.1
        expected = [0.1 + 0.1 * (1 + math.cos(math.pi * e / 20)) for e in range(1, 7)]
        assert [e["temperature"] for e in epochs] == pytest.approx(expected, abs=1e-6)


def test_axis_choices_are_checked():
    for axis, bad in (("objective", "nce"), ("temperature_schedule", "linear"), ("sample_weights", "focal")):
        with pytest.raises(FastltError, match=f"method.{axis}: unknown '{bad}'"):
            resolve_axes(recipe_from_dict({"method": {"name": "simclr", axis: bad}}, "test"))
