"""The training loop on the built-in digits store: run folder, logs, precision paths, checkpoints, honest resume."""
import json

import numpy as np
import pytest
import torch

from fastlt.augment.views import SimCLRViews
from fastlt.errors import FastltError
from fastlt.recipe import Recipe, recipe_from_dict
from fastlt.checkpoint import load_checkpoint
from fastlt.train.run_folder import CHECKPOINT_NAME
from fastlt.train.trainer import pretrain, resume_run


def tiny_recipe(store, out_dir, split: str = "", **train) -> Recipe:
    return recipe_from_dict(
        {
            "data": {"store": str(store), "split": split},
            "model": {"width": 4, "projector_hidden": 32, "projector_out": 16},
            "views": {"size": 16},  # a quarter of the pixels: the trainer's bookkeeping is the same at any size
            "optim": {"lr": 0.1, "warmup_epochs": 1},
            "train": {"epochs": 2, "batch_size": 64, "out_dir": str(out_dir), "progress": False,
                      "precision": "fp32", "device": "cpu", "log_every": 2, **train},
        },
        "test",
    )


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(value, b[key]) for key, value in a.items())


def test_run_folder_records_what_makes_the_run_reproducible(digits_store, tmp_path):
    run = pretrain(tiny_recipe(digits_store, tmp_path, name="a"), "tiny.toml")
    assert run == tmp_path / "a"
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["data"]["store"] == str(digits_store)
    record = json.loads((run / "run.json").read_text())
    assert record["seed"] == 1 and "torch" in record["versions"] and record["device"]["type"] == "cpu"
    assert record["git_commit"] and record["resumes"] == []
    assert record["hardware"]["precision"] == "fp32" and record["hardware"]["reasons"]["precision"] == "set explicitly"
    assert record["data"]["store"] == "digits" and len(record["data"]["split_sha256"]) == 64
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(line["loss"] > 0 and line["images_per_second"] > 0 for line in lines)
    checkpoint = load_checkpoint(run / CHECKPOINT_NAME)
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == lines[-1]["step"]
    assert checkpoint["hardware"]["device"] == "cpu" and checkpoint["hardware"]["batch_size"] == 64
    with pytest.raises(FastltError, match="exists already"):
        pretrain(tiny_recipe(digits_store, tmp_path, name="a"), "tiny.toml")


def test_resume_continues_exactly_and_is_recorded(digits_store, tmp_path, capsys):
    full = pretrain(tiny_recipe(digits_store, tmp_path, name="full"))
    half = pretrain(tiny_recipe(digits_store, tmp_path, name="half"), until_epoch=1)
    assert load_checkpoint(half / CHECKPOINT_NAME)["epoch"] == 1
    resume_run(half)
    assert "resuming at epoch 2 of 2" in capsys.readouterr().err
    a, b = load_checkpoint(full / CHECKPOINT_NAME), load_checkpoint(half / CHECKPOINT_NAME)
    assert a["step"] == b["step"] and same_weights(a["model"], b["model"])
    assert losses(full) == losses(half)
    (resume,) = json.loads((half / "run.json").read_text())["resumes"]
    assert resume["from_epoch"] == 1 and resume["epochs"] == 2 and resume["command"]
    resume_run(half)
    assert "run already complete (epoch 2 of 2)" in capsys.readouterr().err


def test_fp16_run_resumes_with_its_loss_scaler(digits_store, tmp_path):
    # fp16 with a GradScaler is what CUDA users without bf16 get; on CPU it runs the same code path, on slow
    # reference kernels (over 100 s for the whole train part on a Xeon with AMX), so 160 samples: 3 steps an epoch.
    split = tmp_path / "small.npy"
    np.save(split, np.arange(160, dtype=np.int64))
    full = pretrain(tiny_recipe(digits_store, tmp_path, str(split), name="full", precision="fp16"))
    half = pretrain(tiny_recipe(digits_store, tmp_path, str(split), name="half", precision="fp16"), until_epoch=1)
    scaler = load_checkpoint(half / CHECKPOINT_NAME)["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler
    resume_run(half)
    a, b = load_checkpoint(full / CHECKPOINT_NAME), load_checkpoint(half / CHECKPOINT_NAME)
    assert a["scaler"] == b["scaler"] and same_weights(a["model"], b["model"])
    assert losses(full) == losses(half)


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0.2", "optim.lr = 0.2 would change a run trained with 0.1"),
    ("train.batch_size=32", "train.batch_size"),
    ("method.temperature=0.5", "method.temperature"),
    ("train.precision=bf16", "train.precision"),
    ("train.epochs=1", "train.epochs can only be extended"),
    ("train.seed=3", "train.seed"),
])
def test_resume_refuses_to_rewrite_history(digits_store, tmp_path, override, message):
    run = pretrain(tiny_recipe(digits_store, tmp_path, name="run", epochs=3), until_epoch=2)
    before = (run / "config.json").read_text(), (run / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(FastltError, match=message):
        resume_run(run, [override])
    assert ((run / "config.json").read_text(), (run / CHECKPOINT_NAME).read_bytes()) == before


def test_resume_may_extend_the_schedule_and_change_what_does_not_compute(digits_store, tmp_path, capsys):
    run = pretrain(tiny_recipe(digits_store, tmp_path, name="run", epochs=1))
    resume_run(run, ["train.epochs=2", "train.log_every=1", "train.progress=true"])
    assert "resuming at epoch 2 of 2" in capsys.readouterr().err
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2


def test_resume_refuses_other_data_and_another_device(digits_store, tmp_path):
    run = pretrain(tiny_recipe(digits_store, tmp_path, name="run", epochs=2), until_epoch=1)
    split = tmp_path / "other.npy"
    np.save(split, np.arange(200, dtype=np.int64))
    with pytest.raises(FastltError, match="split indices differ"):
        resume_run(run, [f"data.split={split}"])
    payload = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    payload["hardware"]["device"] = "cuda"
    torch.save(payload, run / CHECKPOINT_NAME)
    with pytest.raises(FastltError, match="trained on cuda; resuming on cpu would change"):
        resume_run(run)


def test_compiled_views_are_a_recorded_choice_that_a_resume_keeps(digits_store, tmp_path, monkeypatch):
    compiled = []  # the compile itself is tested in test_compile.py; here only who asks for it
    monkeypatch.setattr(SimCLRViews, "enable_compile", lambda views: compiled.append(views))
    short = pretrain(tiny_recipe(digits_store, tmp_path, name="short", epochs=1))
    reasons = json.loads((short / "run.json").read_text())["hardware"]["reasons"]
    assert compiled == [] and reasons["compile_views"].startswith("auto: off, the run augments ")

    run = pretrain(tiny_recipe(digits_store, tmp_path, name="run", epochs=3, compile_views="on"), until_epoch=1)
    hardware = json.loads((run / "run.json").read_text())["hardware"]
    assert hardware["compile_views"] is True and hardware["reasons"]["compile_views"] == "set explicitly"
    assert len(compiled) == 1
    resume_run(run, ["train.compile_views=auto"], until_epoch=2)
    (resume,) = json.loads((run / "run.json").read_text())["resumes"]
    assert resume["hardware"]["compile_views"] is True and len(compiled) == 2
    assert resume["hardware"]["reasons"]["compile_views"] == "recorded at the start of the run"
    # A checkpoint written before the views could compile resumes with eager views.
    payload = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    del payload["hardware"]["compile_views"]
    torch.save(payload, run / CHECKPOINT_NAME)
    resume_run(run, ["train.compile_views=auto"])
    assert json.loads((run / "run.json").read_text())["resumes"][-1]["hardware"]["compile_views"] is False
    assert len(compiled) == 2


def test_checkpoints_come_on_the_epoch_and_minute_schedules_at_milestones_and_the_last_epoch(
        digits_store, tmp_path, monkeypatch):
    from fastlt.checkpoint import CheckpointWriter

    saved = []
    real_submit = CheckpointWriter.submit
    monkeypatch.setattr(CheckpointWriter, "submit", lambda writer, run, payload, milestone=False: (
        saved.append(payload["epoch"]), real_submit(writer, run, payload, milestone))[1])
    pretrain(tiny_recipe(digits_store, tmp_path, name="a", epochs=5, checkpoint_every=2))  # 5 minutes never pass
    assert saved == [2, 4, 5]
    saved.clear()
    pretrain(tiny_recipe(digits_store, tmp_path, name="b", epochs=5, checkpoint_every=2), until_epoch=3)
    assert saved == [2, 3]
    saved.clear()
    pretrain(tiny_recipe(digits_store, tmp_path, name="c", epochs=5, keep_every=3))  # neither rule: only these
    assert saved == [3, 5]
    saved.clear()
    pretrain(tiny_recipe(digits_store, tmp_path, name="d", epochs=3, checkpoint_minutes=1e-6))  # epochs take longer
    assert saved == [1, 2, 3]


def test_the_time_a_checkpoint_held_the_loop_counts_in_the_next_epochs_speed(digits_store, tmp_path, monkeypatch):
    from fastlt.checkpoint import CheckpointWriter

    real_submit = CheckpointWriter.submit
    monkeypatch.setattr(CheckpointWriter, "submit", lambda writer, run, payload, milestone=False: 1000 + real_submit(
        writer, run, payload, milestone))  # as if each hand-over had held the loop 1000 s
    run = pretrain(tiny_recipe(digits_store, tmp_path, name="held", epochs=3, checkpoint_every=2))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch_seconds"] > 1000 for line in lines] == [False, False, True]  # epoch 2's checkpoint: in 3's
    assert lines[2]["images_per_second"] < 2  # some 1,200 images in over 1000 s


def test_a_non_finite_loss_names_the_newest_checkpoint_whatever_the_schedule(digits_store, tmp_path, monkeypatch):
    from fastlt.methods.contrast import ContrastiveLoss

    calls, real_loss = [], ContrastiveLoss.forward

    def poisoned(self, z1, z2, labels=None):  # epoch 2's first step (19 steps an epoch) gives NaN
        calls.append(1)
        loss, per_sample = real_loss(self, z1, z2, labels)
        return (loss * float("nan"), per_sample) if len(calls) == 20 else (loss, per_sample)

    monkeypatch.setattr(ContrastiveLoss, "forward", poisoned)
    with pytest.raises(FastltError, match=r"epoch 2, step 1 of 19: .*\(last checkpoint: none yet\)"):
        pretrain(tiny_recipe(digits_store, tmp_path, name="nan", epochs=3))  # epoch 1 was not due


def test_a_non_finite_loss_stops_the_run_before_memory_and_checkpoint(digits_store, tmp_path, monkeypatch):
    from fastlt.methods.contrast import ContrastiveLoss

    recipe = tiny_recipe(digits_store, tmp_path, name="nan", epochs=3, log_every=50)
    recipe.method.name = "bcl-i"
    run = pretrain(recipe, until_epoch=1)
    memory_after_epoch_1 = load_checkpoint(run / CHECKPOINT_NAME)["model"]["boost.momentum_loss"]
    calls = []

    real_loss = ContrastiveLoss.forward

    def poisoned(self, z1, z2, labels=None):  # the 5th step of epoch 2 gives NaN
        calls.append(1)
        loss, per_sample = real_loss(self, z1, z2, labels)
        if len(calls) == 5:
            return loss * float("nan"), per_sample * float("nan")
        return loss, per_sample

    observed = []
    monkeypatch.setattr(ContrastiveLoss, "forward", poisoned)
    import fastlt.methods.boost as boost
    real_observe = boost.MemorisationBoost.observe

    def observe(self, indices, losses):
        real_observe(self, indices, losses)
        observed.append(bool(torch.isfinite(self.momentum_loss).all()))

    monkeypatch.setattr(boost.MemorisationBoost, "observe", observe)
    with pytest.raises(FastltError, match=r"epoch 2, step 5 of 19: the loss is nan; .*last checkpoint: epoch 1"):
        resume_run(run)
    assert observed and all(observed)  # NaN never entered the memory
    checkpoint = load_checkpoint(run / CHECKPOINT_NAME)
    assert checkpoint["epoch"] == 1 and torch.equal(checkpoint["model"]["boost.momentum_loss"], memory_after_epoch_1)
    assert len(losses(run)) == 1


def test_bf16_path_trains(digits_store, tmp_path):
    # Tiny shapes: on a CPU without bf16 instructions this path is emulated and about 10x slower.
    run = pretrain(tiny_recipe(digits_store, tmp_path, name="bf16", precision="bf16", epochs=1))
    checkpoint = load_checkpoint(run / CHECKPOINT_NAME)
    assert checkpoint["scaler"] == {}  # bf16 needs no loss scaling: the scaler stays disabled
    assert checkpoint["hardware"]["precision"] == "bf16"
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_loss_decreases_over_a_short_run(digits_store, tmp_path):
    run = pretrain(tiny_recipe(digits_store, tmp_path, name="long", epochs=6))
    assert losses(run)[-1] < losses(run)[0]


def test_parameter_groups_exclude_bn_and_bias_on_request():
    from torch import nn

    from fastlt.train.run_state import parameter_groups

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    (single,) = parameter_groups(model, 5e-4, exclude_bn_bias=False)
    assert single["weight_decay"] == 5e-4 and len(single["params"]) == 6
    decayed, undecayed = parameter_groups(model, 5e-4, exclude_bn_bias=True)
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert undecayed["weight_decay"] == 0.0 and len(undecayed["params"]) == 4


def test_lars_scales_decayed_weights_by_the_trust_ratio_and_leaves_bn_and_bias_plain():
    from torch import nn

    from fastlt.recipe import OptimConfig
    from fastlt.train.run_state import build_optimizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    config = OptimConfig(name="lars", lr=0.5, momentum=0.9, weight_decay=0.01, exclude_bn_bias=True, lars_trust=1e-3)
    optimizer = build_optimizer(model, config, torch.device("cpu"))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = grads[name].clone()
    optimizer.step()
    for name, p in model.named_parameters():
        w, g = before[name], grads[name]
        if name == "0.weight":  # decayed: lr * eta * |w| / (|g| + wd |w|) * (g + wd w), You et al.'s local rate
            local = 1e-3 * w.norm() / (g.norm() + 0.01 * w.norm())
            expected = w - 0.5 * local * (g + 0.01 * w)
        else:  # BN parameters and the bias: no decay and no trust ratio, a plain SGD step
            expected = w - 0.5 * g
        torch.testing.assert_close(p.detach(), expected, msg=name)
