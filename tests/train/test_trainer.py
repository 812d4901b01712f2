"""The training loop on the built-in digits store: run folder, logs, precision paths, exact resume."""
import json

import pytest
import torch

from fastlt.errors import FastltError
from fastlt.recipe import Recipe, recipe_from_dict
from fastlt.train.checkpoint import load_checkpoint
from fastlt.train.trainer import CHECKPOINT_NAME, pretrain


def tiny_recipe(store, out_dir, **train) -> Recipe:
    return recipe_from_dict(
        {
            "data": {"store": str(store)},
            "model": {"width": 4, "projector_hidden": 32, "projector_out": 16},
            "optim": {"lr": 0.1, "warmup_epochs": 1},
            "train": {"epochs": 2, "batch_size": 64, "out_dir": str(out_dir), "progress": False,
                      "precision": "fp32", "log_every": 2, **train},
        },
        "test",
    )


def test_run_folder_records_what_makes_the_run_reproducible(digits_store, tmp_path):
    run = pretrain(tiny_recipe(digits_store, tmp_path, name="a"), "tiny.toml")
    assert run == tmp_path / "a"
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["data"]["store"] == str(digits_store)
    record = json.loads((run / "run.json").read_text())
    assert record["seed"] == 1 and "torch" in record["versions"] and record["device"]["type"] == "cpu"
    assert record["git_commit"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(line["loss"] > 0 and line["images_per_second"] > 0 for line in lines)
    checkpoint = load_checkpoint(run / CHECKPOINT_NAME)
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == lines[-1]["step"]
    with pytest.raises(FastltError, match="exists already"):
        pretrain(tiny_recipe(digits_store, tmp_path, name="a"), "tiny.toml")


def test_resume_continues_exactly(digits_store, tmp_path):
    full = pretrain(tiny_recipe(digits_store, tmp_path, name="full"))
    half = pretrain(tiny_recipe(digits_store, tmp_path, name="half"), until_epoch=1)
    assert load_checkpoint(half / CHECKPOINT_NAME)["epoch"] == 1
    pretrain(tiny_recipe(digits_store, tmp_path, name="half"), resume=half)
    a = load_checkpoint(full / CHECKPOINT_NAME)
    b = load_checkpoint(half / CHECKPOINT_NAME)
    assert a["step"] == b["step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    losses = lambda run: [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses(full) == losses(half)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths_train(digits_store, tmp_path, precision):
    # fp16 runs with a GradScaler; on CPU this exercises the same code path CUDA users without bf16 get.
    run = pretrain(tiny_recipe(digits_store, tmp_path, name=precision, precision=precision, epochs=1))
    checkpoint = load_checkpoint(run / CHECKPOINT_NAME)
    if precision == "bf16":
        assert checkpoint["scaler"] == {}  # bf16 needs no loss scaling: the scaler stays disabled
    else:
        assert checkpoint["scaler"]["scale"] > 0
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_loss_decreases_over_a_short_run(digits_store, tmp_path):
    run = pretrain(tiny_recipe(digits_store, tmp_path, name="long", epochs=6, precision="bf16"))
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]


def test_parameter_groups_exclude_bn_and_bias_on_request():
    from torch import nn

    from fastlt.train.trainer import parameter_groups

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    (single,) = parameter_groups(model, 5e-4, exclude_bn_bias=False)
    assert single["weight_decay"] == 5e-4 and len(single["params"]) == 6
    decayed, undecayed = parameter_groups(model, 5e-4, exclude_bn_bias=True)
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert undecayed["weight_decay"] == 0.0 and len(undecayed["params"]) == 4
