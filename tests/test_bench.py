"""`fastlt bench`: each command runs on tiny inputs and records what it measured and where.

Smoke tests only: they check the structure of the results (the machine, one entry per
contender, skipped ones with their reason, the breakdown's stages) and that rates are
positive, never how fast anything is; speed is measured on a quiet machine.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fastlt.augment.views import ViewConfig
from fastlt.bench import timing, views
from fastlt.bench.reference import PILImages, ReferenceViews, reference_loader
from fastlt.cli import main

TINY_MODEL = ["--set", "model.width=8", "--set", "model.projector_hidden=32", "--set", "model.projector_out=16",
              "--set", "train.precision=fp32"]
BREAKDOWN = {"one_view", "to_float", "sample", "resized_crop", "colour_jitter", "hue_shift", "grayscale", "blur",
             "randaugment_bcl-i", "randaugment_bcl-d"}


def invoke(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.stdout


def check_machine(machine: dict) -> None:
    cpu = machine["cpu"]
    assert cpu["name"] and cpu["cores"] >= 1
    assert set(cpu["flags"]) >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert all(isinstance(flag, bool) for flag in cpu["flags"].values())
    assert "gpu" in machine and (machine["gpu"] is None) == (not torch.cuda.is_available())
    assert {"torch", "torchvision"} <= set(machine["versions"])


def test_best_time_warms_up_then_keeps_the_best_of_the_repeats():
    calls = []
    seconds = timing.best_time(lambda: calls.append(1), torch.device("cpu"), repeats=3, warmup=2)
    assert len(calls) == 5 and seconds >= 0
    with pytest.raises(ValueError):
        timing.best_time(lambda: None, torch.device("cpu"), repeats=0)
    check_machine(timing.machine_description(torch.device("cpu")))


def test_the_per_image_reference_pipeline_gives_two_float_views_per_image():
    config = ViewConfig.cifar()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for reference in (ReferenceViews(config), ReferenceViews(config, 2, randaugment_ops=2, mapping="bcl-d"),
                      ReferenceViews(config, 1, randaugment_ops=1, mapping="bcl-i")):
        made = reference(image)
        assert len(made) == reference.count
        for view in made:
            assert view.dtype == torch.float32 and view.shape == (3, 32, 32)
            assert 0.0 <= float(view.min()) and float(view.max()) <= 1.0
    assert "RandAugment" in ReferenceViews(config, 2, 1).describe()
    assert "RandomResizedCrop(size=(32, 32), scale=(0.1, 1.0)" in ReferenceViews(config).describe()

    images, labels = views.synthetic_images(6)
    dataset = PILImages(images, labels, ReferenceViews(config))
    first, second, label = dataset[0]
    assert first.shape == second.shape == (3, 32, 32) and label == labels[0]
    batch = next(iter(reference_loader(dataset, 4, workers=0)))
    assert [tuple(t.shape) for t in batch] == [(4, 3, 32, 32), (4, 3, 32, 32), (4,)]
    assert batch[0].dtype == torch.float32


def test_bench_views_writes_every_contender_the_goals_and_the_breakdown(tmp_path):
    out = tmp_path / "views.json"
    table = invoke(["bench", "views", "--batch", "16", "--batches", "2", "--repeats", "1", "--no-compile",
                    "--bcl", "cifar100_lt/bcl-i", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    check_machine(result["machine"])
    assert result["settings"]["batch"] == 16 and result["settings"]["images_per_pass"] == 32
    entries = {(entry["group"], entry["name"]): entry for entry in result["contenders"]}
    assert set(entries) == {
        ("simclr", "per-image PIL + torchvision"), ("simclr", "fastlt, eager"), ("simclr", "fastlt, torch.compile"),
        ("simclr", "kornia.augmentation"), ("simclr", "DALI, CPU pipeline"),
        ("bcl-i", "per-image PIL + torchvision + RandAugment"), ("bcl-i", "fastlt + boosted RandAugment"),
        ("bcl-i", "fastlt + boosted RandAugment, torch.compile")}
    assert entries[("simclr", "fastlt, torch.compile")] == {
        "name": "fastlt, torch.compile", "group": "simclr", "where": "cpu", "status": "skipped",
        "reason": "--no-compile"}
    for entry in entries.values():
        if entry["status"] == "skipped":
            assert entry["reason"] and "\n" not in entry["reason"]
        else:
            assert entry["status"] == "ok" and entry["images_per_s"] > 0 and entry["ratio_to_reference"] > 0
    for name, module in (("kornia.augmentation", "kornia"), ("DALI, CPU pipeline", "nvidia.dali")):
        # The test extra installs both, so here they must run (a skip would hide a broken contender).
        assert entries[("simclr", name)]["status"] == ("ok" if importlib.util.find_spec(module) else "skipped"), name
    for key in (("simclr", "per-image PIL + torchvision"), ("bcl-i", "per-image PIL + torchvision + RandAugment")):
        assert entries[key]["ratio_to_reference"] == 1.0
    assert entries[("bcl-i", "fastlt + boosted RandAugment")]["randaugment_ops"] == 1
    assert {goal["goal"].split(" >=")[0] for goal in result["goals"]} >= {
        "fastlt, eager", "bcl-i: fastlt + boosted RandAugment"}
    assert all(goal["met"] in (True, False, None) for goal in result["goals"])
    parts = result["breakdown"]["parts"]
    assert set(parts) == BREAKDOWN
    assert all(part["seconds"] > 0 and part["images_per_s"] > 0 for part in parts.values())
    assert parts["blur"]["in_recipe_view"] is False and parts["colour_jitter"]["in_recipe_view"] is True
    assert "goals" in table and "where the time goes" in table and "fastlt, eager" in table


@pytest.mark.parametrize("quiet", [True, False])
def test_the_cuda_home_probe_says_nothing_on_a_machine_without_cuda(quiet, tmp_path):
    """torch.compile on a CPU loads torch.utils.cpp_extension, which warns "No CUDA runtime is found" where a CUDA
    toolkit (CUDA_HOME) is installed but no GPU is usable: `bench views` printed it. The compile entry points call
    quiet_cuda_home_probe first (tests/augment/test_views.py and the compiled-method tests run them); here, in a
    fresh process, the probe alone, and without it the warning, so the check can fail."""
    probe = "from fastlt.notices import quiet_cuda_home_probe; quiet_cuda_home_probe(); " if quiet else ""
    command = [sys.executable, "-c", probe + "import torch.utils.cpp_extension"]
    env = {**os.environ, "CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ("CUDA" in result.stdout + result.stderr) is not quiet


def test_a_contender_that_cannot_run_is_reported_skipped_with_its_reason(monkeypatch):
    images, labels = views.synthetic_images(16)
    setup = views.Setup(images, labels, 8, 2, 1, torch.device("cpu"), 1)
    config = ViewConfig.cifar()
    monkeypatch.setattr(views, "unavailable", lambda name: f"{name} is not installed (pip install 'fastlt[bench]')")
    assert views.kornia_contender(setup, config).skipped == "kornia is not installed (pip install 'fastlt[bench]')"
    assert views.dali_contender(setup, config).skipped == "dali is not installed (pip install 'fastlt[bench]')"

    def broken(*args, **kwargs):
        raise RuntimeError("no CPU backend\nC++ context: ...")

    monkeypatch.setattr(views, "unavailable", lambda name: "")
    monkeypatch.setattr(views, "dali_views", broken)
    skipped = views.dali_contender(setup, config)
    assert skipped.skipped == "DALI failed: RuntimeError: no CPU backend" and skipped.images_per_s is None
    assert skipped.record(100.0) == {"name": "DALI, CPU pipeline", "group": "simclr", "where": "cpu, 1 threads",
                                     "status": "skipped", "reason": skipped.skipped}


def test_bench_views_refuses_a_recipe_without_boosted_views_before_running_anything():
    result = CliRunner().invoke(main, ["bench", "views", "--bcl", "cifar100_lt/simclr"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: --bcl cifar100_lt/simclr: method 'simclr' has no boosted RandAugment views (view strength 'fixed'); "
        "give a BCL recipe such as cifar100_lt/bcl-i"]


def test_bench_train_splits_fastlt_and_the_reference_step(tmp_path):
    out = tmp_path / "train.json"
    table = invoke(["bench", "train", "cifar100_lt/simclr", *TINY_MODEL, "--batch", "16", "--steps", "1",
                    "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    check_machine(result["machine"])
    assert result["settings"]["batch"] == 16 and result["settings"]["timed_steps"] == 1
    fastlt, reference = result["fastlt"], result["reference"]
    assert set(fastlt["seconds"]) == {"load", "views", "forward_backward", "optimizer"}
    assert set(reference["seconds"]) == {"load", "to_device", "forward_backward", "optimizer"}
    for side in (fastlt, reference):
        assert all(value >= 0 for value in side["seconds"].values()) and side["step_seconds"] > 0
        assert side["images_per_s"] > 0 and 0 <= side["share_outside_model"] <= 1
    assert fastlt["seconds"]["views"] > 0 and fastlt["seconds"]["forward_backward"] > 0
    assert fastlt["unsplit"]["images_per_s"] > 0
    assert fastlt["hardware"]["precision"] == "fp32" and fastlt["hardware"]["compile"] is False
    assert reference["hardware"] == {"device": "cpu", "precision": "fp32", "memory_format": "contiguous",
                                     "compile": False}
    assert result["speedup"] > 0 and "forward + backward" in table


def test_bench_train_runs_a_bcl_recipe_on_an_existing_store(tmp_path, digits_store):
    out = tmp_path / "train.json"
    invoke(["bench", "train", "cifar100_lt/bcl-d", *TINY_MODEL, "--set", "data.split=''", "--batch", "16",
            "--steps", "1", "--store", str(digits_store), "--device", "cpu", "--no-reference", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["settings"]["method"] == "bcl-d" and str(digits_store) in result["settings"]["data"]
    assert result["reference"] == {"status": "skipped", "reason": "--no-reference"} and result["speedup"] is None
    assert result["fastlt"]["images_per_s"] > 0


def test_bench_linear_eval_times_both_protocols(tmp_path, tiny_run):
    out = tmp_path / "eval.json"
    table = invoke(["bench", "linear-eval", str(tiny_run), "--epochs", "2", "--sdclr-epochs", "1",
                    "--device", "cpu", "--precision", "fp32", "--out", str(out)])
    result = json.loads(out.read_text())
    check_machine(result["machine"])
    assert set(result["protocols"]) == {"bcl", "sdclr"}
    assert all(entry["seconds"] > 0 and entry["evaluations"] for entry in result["protocols"].values())
    assert result["settings"]["overrides"] == {"epochs": 2, "sdclr_epochs": 1}
    assert result["sdclr_over_bcl"] > 0 and "SDCLR's protocol takes" in table


def test_bench_loader_times_the_stores_own_loader_alone_and_with_views(digits_store, tmp_path):
    out = tmp_path / "loader.json"
    table = invoke(["bench", "loader", "--store", str(digits_store), "--backend", "native", "--batch", "64",
                    "--batches", "2", "--repeats", "1", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    check_machine(result["machine"])
    assert result["settings"]["backend"] == "native" and result["settings"]["images_per_pass"] == 128
    assert result["settings"]["view_size"] == 32  # CIFAR views for 32 px images
    assert all(entry["images_per_s"] > 0 for entry in result["results"].values())
    assert set(result["results"]) == {"load", "load_and_views"} and "load + two 32 px views" in table
    wrong = CliRunner().invoke(main, ["bench", "loader", "--store", str(digits_store), "--backend", "ffcv"])
    assert wrong.exit_code == 1 and "is a native store (convert the data with --format ffcv" in wrong.output
