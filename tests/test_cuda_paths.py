"""The CUDA-only paths, run where a GPU is present (skipped with the reason elsewhere).

What a CPU cannot show: ``auto`` choosing bf16, channels_last and torch.compile on CUDA and
the run still learning; fp16 with a live GradScaler; the batched augmentation kernels giving
the CPU's numbers on the GPU; the compiled views with RandAugment in their graph; linear
evaluation reading a CUDA checkpoint. The same code runs
on the CPU in the rest of the suite.
"""
import json

import pytest
import torch

from fastlt.augment.functional import resized_crop
from fastlt.augment.randaugment import OPS, apply_op
from fastlt.evaluate.protocol import linear_eval
from fastlt.recipe import recipe_from_dict
from fastlt.train.checkpoint import load_checkpoint
from fastlt.train.trainer import CHECKPOINT_NAME, pretrain, resume_run

pytestmark = pytest.mark.cuda


def cuda_recipe(store, out_dir, method="simclr", lr=0.3, **train):
    return recipe_from_dict(
        {
            "method": {"name": method},
            "data": {"store": str(store)},
            "model": {"width": 16, "projector_hidden": 64, "projector_out": 32},
            "optim": {"lr": lr, "warmup_epochs": 1},
            "train": {"epochs": 6, "batch_size": 128, "out_dir": str(out_dir), "progress": False,
                      "device": "cuda", "log_every": 1, **train},
        },
        "cuda-test",
    )


def epoch_losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method, lr", [("simclr", 0.3), ("bcl-d-ts", 0.3), ("selfcon", 0.05)])
def test_auto_on_cuda_is_compiled_bf16_channels_last_and_learns(digits_store, tmp_path, monkeypatch, method, lr):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    run = pretrain(cuda_recipe(digits_store, tmp_path, method=method, lr=lr, name=method))
    hardware = json.loads((run / "run.json").read_text())["hardware"]
    expected_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert (hardware["device"], hardware["precision"], hardware["memory_format"], hardware["compile"],
            hardware["compile_views"]) == ("cuda", expected_precision, "channels_last", True, True)
    losses = epoch_losses(run)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses


def test_fp16_on_cuda_scales_the_loss_and_resumes(digits_store, tmp_path):
    recipe = dict(precision="fp16", compile="off", epochs=2)
    full = pretrain(cuda_recipe(digits_store, tmp_path, name="full", **recipe))
    half = pretrain(cuda_recipe(digits_store, tmp_path, name="half", **recipe), until_epoch=1)
    assert load_checkpoint(half / CHECKPOINT_NAME)["scaler"]["scale"] > 0
    resume_run(half)
    a, b = load_checkpoint(full / CHECKPOINT_NAME), load_checkpoint(half / CHECKPOINT_NAME)
    assert a["step"] == b["step"] and a["scaler"]["scale"] == b["scaler"]["scale"]
    # cuDNN's convolution backward sums in a run-dependent order: equal up to rounding, not bit for bit.
    assert epoch_losses(full)[0] == pytest.approx(epoch_losses(half)[0], rel=1e-3)
    assert epoch_losses(full)[1] == pytest.approx(epoch_losses(half)[1], rel=1e-2)


def test_linear_eval_reads_a_cuda_run_on_cuda(digits_store, tmp_path):
    run = pretrain(cuda_recipe(digits_store, tmp_path, name="probe", epochs=1, compile="off"))
    reports = linear_eval(run, tmp_path / "reports", device="cuda", precision="bf16",
                          overrides={"epochs": 5}).reports["bcl:full"]
    assert 0.0 <= reports["linear"]["overall"] <= 100.0 and {"many", "medium", "few"} <= set(reports["linear"])


@pytest.mark.parametrize("op", OPS)
def test_randaugment_ops_give_the_cpu_result_on_cuda(op):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=generator).float() / 255
    magnitudes = torch.rand(16, generator=generator) * 30
    signs = torch.where(torch.rand(16, generator=generator) < 0.5, -1.0, 1.0)
    on_cpu = apply_op(images, op, magnitudes, signs, torch.Generator().manual_seed(1))
    on_cuda = apply_op(images.cuda(), op, magnitudes.cuda(), signs.cuda(), torch.Generator("cuda").manual_seed(1))
    if op == "cutout":  # CUDA draws other centres from its own generator: compare what is drawn-free
        assert on_cuda.shape == on_cpu.shape
        return
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, atol=1 / 255 + 1e-5, rtol=0)


def test_compiled_bcl_d_views_on_cuda_equal_eager_in_one_graph(tmp_path, monkeypatch):
    """On CUDA the masked RandAugment stages are traced into the view pipeline's one graph."""
    from torch._dynamo.utils import counters

    from fastlt.augment.views import SimCLRViews, ViewConfig
    from fastlt.methods.boost import MemorisationBoost

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    boost = MemorisationBoost(64, "bcl-d").cuda()
    boost.weights.copy_(torch.rand(64, device="cuda", generator=torch.Generator("cuda").manual_seed(1)))
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    eager, compiled = SimCLRViews(ViewConfig(), boost.stage), SimCLRViews(ViewConfig(), boost.stage)
    compiled.enable_compile()

    def two_views(views):
        generator = torch.Generator("cuda").manual_seed(3)
        return views.many(images, generator, 2, boost.strengths(torch.arange(64, device="cuda"), generator))

    graphs_before = counters["stats"]["unique_graphs"]
    for _ in range(2):
        for expected, result in zip(two_views(eager), two_views(compiled)):
            torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)
    assert counters["stats"]["unique_graphs"] - graphs_before == 1


def test_resized_crop_gives_the_cpu_result_on_cuda():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=generator)
    boxes = torch.tensor([[0, 0, 32, 32], [3, 5, 20, 11], [10, 0, 7, 30], [0, 31, 32, 1]] * 2)
    flip = torch.arange(8) % 3 == 0
    expected = resized_crop(images, boxes, (32, 32), flip)
    torch.testing.assert_close(resized_crop(images.cuda(), boxes.cuda(), (32, 32), flip.cuda()).cpu(), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_ffcv_and_dali_loaders_deliver_to_cuda_in_the_native_order(digits_store, tmp_path, backend):
    """FFCV's ToDevice and DALI's mixed (nvJPEG) decoder on the GPU: the native order, pixels within JPEG loss."""
    import numpy as np

    from fastlt.data.backends import make_loader
    from fastlt.data.loader import NativeLoader
    from fastlt.data.store import Store, write_native_store

    pytest.importorskip("ffcv" if backend == "ffcv" else "nvidia.dali")
    native = Store.open(digits_store)
    parts = {name: native.part(name) for name in native.parts}
    store = Store.open(write_native_store(tmp_path / backend, "digits", native.class_names, parts, {},
                                          backend=backend, encode={"image_format": "jpg", "quality": 95,
                                                                   "workers": 2}))
    split = np.arange(0, len(parts["train"].labels), 3)
    expected = NativeLoader(parts["train"], split, 100, "cpu", torch.Generator().manual_seed(4))
    loader = make_loader(store, "train", split, 100, torch.device("cuda"), torch.Generator("cpu").manual_seed(4))
    for want, got in zip(expected, loader, strict=True):
        assert got.images.is_cuda and got.indices.is_cuda
        assert torch.equal(got.indices.cpu(), want.indices) and torch.equal(got.labels.cpu(), want.labels)
        assert (got.images.cpu().float() - want.images.float()).abs().mean() < 4.0
