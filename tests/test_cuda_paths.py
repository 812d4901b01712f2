"""The CUDA-only paths, run where a GPU is present (skipped with the reason elsewhere), each compared by value.

What a CPU cannot show: ``auto`` choosing bf16, channels_last and torch.compile on CUDA and
the run still learning; a training step under those choices (and under fp16, and compiled with
CUDA graphs, ``train.compile = max``) giving the CPU's fp32 loss and gradients; an fp16 run with
a live GradScaler resuming to the uninterrupted run, and its fused SGD step never waiting on the
host; the batched augmentation kernels giving the CPU's numbers on the GPU; the compiled views
with RandAugment in their graph; the FFCV and DALI loaders delivering to the GPU, also while the
loop runs far ahead of it; linear evaluation of a CUDA run giving the CPU's features and
accuracy. Where a comparison can run on the CPU too, the test is parametrised over the device
and its ``cpu`` case runs everywhere, so the comparison itself (the reference half, the
tolerances' bookkeeping) is exercised on every machine; the ``cuda`` cases are marked ``cuda``.
"""
import copy
import json
from pathlib import Path

import pytest
import torch

from fastlt.augment.functional import resized_crop
from fastlt.augment.randaugment import OPS, StageDraws, apply_op, augment_stage
from fastlt.data.store import Store
from fastlt.measure.features import extract_features
from fastlt.evaluate.protocol import linear_eval, pretrained_backbone
from fastlt.methods import build_method
from fastlt.methods.base import StepContext
from fastlt.recipe import recipe_from_dict
from fastlt.checkpoint import load_checkpoint
from fastlt.hardware import compile_mode
from fastlt.train.run_folder import CHECKPOINT_NAME
from fastlt.train.trainer import pretrain, resume_run

CUDA = pytest.param("cuda", marks=pytest.mark.cuda)
DEVICES = ["cpu", CUDA]


# Width 16 on all 1,198 digits on CUDA; the CPU cases of a device comparison run the same test on what the CPU
# tests train, width 4 on the digits-LT split (468 images).
MODELS = {"cuda": {"width": 16, "projector_hidden": 64, "projector_out": 32},
          "cpu": {"width": 4, "projector_hidden": 32, "projector_out": 16}}
SPLITS = {"cuda": {}, "cpu": {"split": str(Path(__file__).resolve().parents[1] / "splits" / "digits_lt" /
                                           "ratio10_seed1.npy")}}


def cuda_recipe(store, out_dir, method="simclr", lr=0.3, device="cuda", **train):
    return recipe_from_dict(
        {
            "method": {"name": method},
            "data": {"store": str(store), **SPLITS[device]},
            "model": MODELS[device],
            "optim": {"lr": lr, "warmup_epochs": 1},
            "train": {"epochs": 6, "batch_size": 128, "out_dir": str(out_dir), "progress": False,
                      "device": device, "log_every": 1, **train},
        },
        "cuda-test",
    )


def epoch_losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||, in float64 on the CPU."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).norm() / want.norm())


@pytest.mark.cuda
@pytest.mark.parametrize("method, lr", [("simclr", 0.3), ("bcl-d-ts", 0.3), ("selfcon", 0.05)])
def test_auto_on_cuda_is_compiled_bf16_channels_last_and_learns(digits_store, tmp_path, monkeypatch, method, lr):
    """The choices and a falling loss; the numbers these choices compute are compared with the CPU's fp32 ones
    step by step in test_a_step_under_the_devices_choices_gives_the_cpu_fp32_loss_and_gradients."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    run = pretrain(cuda_recipe(digits_store, tmp_path, method=method, lr=lr, name=method))
    hardware = json.loads((run / "run.json").read_text())["hardware"]
    expected_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert (hardware["device"], hardware["precision"], hardware["memory_format"], hardware["compile"],
            hardware["compile_views"]) == ("cuda", expected_precision, "channels_last", True, True)
    assert hardware["reasons"]["cudnn_benchmark"].startswith("on") and torch.backends.cudnn.benchmark
    losses = epoch_losses(run)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses


# (device, autocast dtype, compiled: no, the default mode or max, loss tolerance, gradient tolerance): relative
# errors against the CPU, contiguous and eager. bf16 keeps 8 bits of mantissa (a relative step of 2^-8 = 0.4% per
# rounding), fp16 11, and the errors of a whole forward and backward add up to a few of those steps (a wrong kernel
# or layout is off by the order of the values). Under max the step's last call replays CUDA graphs (recorded at the
# second). The CPU case changes only the memory format, and both halves run in float64: in fp32 another summation
# order (oneDNN picks its channels_last kernels by thread count) moves a pre-activation of 4e-6 across zero, and
# that one ReLU flip moved selfcon's gradients by 1% (measured with one torch thread, Xeon model 207).
STEP_REFERENCE_DTYPE = {"cpu": torch.float64, "cuda": torch.float32}
STEP_CASES = [
    pytest.param("cpu", None, "off", 1e-12, 1e-9, id="cpu-fp64-channels_last"),
    pytest.param("cuda", torch.bfloat16, "on", 3e-2, 1e-1, id="cuda-bf16-channels_last-compiled",
                 marks=pytest.mark.cuda),
    pytest.param("cuda", torch.bfloat16, "max", 3e-2, 1e-1, id="cuda-bf16-channels_last-max",
                 marks=pytest.mark.cuda),
    pytest.param("cuda", torch.float16, "off", 5e-3, 2e-2, id="cuda-fp16-channels_last", marks=pytest.mark.cuda),
]


@pytest.mark.parametrize("method_name", ["simclr", "bcl-d-ts", "selfcon"])
@pytest.mark.parametrize("device, dtype, compiled, loss_tolerance, gradient_tolerance", STEP_CASES)
def test_a_step_under_the_devices_choices_gives_the_cpu_fp32_loss_and_gradients(
        method_name, device, dtype, compiled, loss_tolerance, gradient_tolerance, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    recipe = recipe_from_dict({"method": {"name": method_name},
                               "model": {"width": 16, "projector_hidden": 64, "projector_out": 32},
                               "views": {"size": 16}}, "test")
    torch.manual_seed(0)
    precision = STEP_REFERENCE_DTYPE[device]
    reference = build_method(recipe, num_samples=64).to(precision)
    reference.set_memory_format("contiguous")
    tested = copy.deepcopy(reference).to(device)
    tested.set_memory_format("channels_last")
    if compiled != "off":
        tested.enable_compile(compile_mode(compiled, torch.device(device)))
    generator = torch.Generator().manual_seed(1)
    views = tuple(torch.rand(16, 3, 16, 16, generator=generator, dtype=precision)
                  for _ in range(reference.num_views))
    labels = torch.arange(16) % 5

    def step(method, on, autocast_dtype):
        method.train()
        method.on_epoch_start(1)
        autocast = lambda: torch.autocast(on, dtype=autocast_dtype, enabled=autocast_dtype is not None)  # noqa: E731
        context = StepContext(autocast=autocast, backward=lambda loss: loss.backward())
        placed = tuple(view.to(on).contiguous(memory_format=method.memory_format) for view in views)
        output = method.step(placed, labels.to(on), context)
        return output.loss, {name: p.grad for name, p in method.named_parameters() if p.grad is not None}

    want_loss, want_grads = step(reference, "cpu", None)
    for _ in range(3):  # CUDA graphs (max) record at the second call and replay from the third: the last counts
        tested.zero_grad(set_to_none=True)
        got_loss, got_grads = step(tested, device, dtype)
    assert got_loss.device.type == device and got_grads.keys() == want_grads.keys() and want_grads
    assert relative_error(got_loss, want_loss) <= loss_tolerance, (float(got_loss), float(want_loss))
    flat = [torch.cat([grads[name].flatten() for name in sorted(want_grads)]) for grads in (got_grads, want_grads)]
    assert relative_error(*flat) <= gradient_tolerance


# Epoch losses and final weights of the resumed run against the uninterrupted one on the same device: on CUDA in
# fp16 with a live GradScaler, where cuDNN's convolution backward sums in a run-dependent order, so equal up to
# rounding that grows with the steps taken (stated per epoch), not bit for bit. The CPU case runs the comparison
# in fp32 (fp16 convolutions on a CPU take minutes; the CPU's fp16 resume is checked bit for bit, on a smaller
# run, by tests/train/test_trainer.py::test_fp16_run_resumes_with_its_loss_scaler).
@pytest.mark.parametrize("device, precision", [("cpu", "fp32"), pytest.param("cuda", "fp16", marks=pytest.mark.cuda)])
def test_a_resumed_run_ends_as_the_uninterrupted_one_with_its_loss_scaler(digits_store, tmp_path, device, precision):
    recipe = dict(precision=precision, compile="off", epochs=2, device=device)
    full = pretrain(cuda_recipe(digits_store, tmp_path, name="full", **recipe))
    half = pretrain(cuda_recipe(digits_store, tmp_path, name="half", **recipe), until_epoch=1)
    scaler = load_checkpoint(half / CHECKPOINT_NAME)["scaler"]
    assert (scaler["scale"] > 0) if precision == "fp16" else scaler == {}  # a GradScaler only where fp16 needs one
    resume_run(half)
    a, b = load_checkpoint(full / CHECKPOINT_NAME), load_checkpoint(half / CHECKPOINT_NAME)
    assert a["step"] == b["step"] and a["scaler"].get("scale") == b["scaler"].get("scale")
    assert epoch_losses(full)[0] == pytest.approx(epoch_losses(half)[0], rel=1e-3)
    assert epoch_losses(full)[1] == pytest.approx(epoch_losses(half)[1], rel=1e-2)
    weights = [torch.cat([state[key].flatten().double() for key in sorted(a["model"])
                          if state[key].is_floating_point()]) for state in (b["model"], a["model"])]
    assert relative_error(*weights) <= 1e-2


# Against the CPU in fp32 on the same checkpoint: the features (bf16 keeps 8 mantissa bits) and the probe's overall
# accuracy, which also differs because the probe's generator lives on the features' device (another random stream:
# other initial weights and batch order), within 3 points on digits after 100 probe epochs (about 200 steps).
@pytest.mark.parametrize("device", DEVICES)
def test_linear_eval_of_a_run_on_the_device_gives_the_cpus_features_and_accuracy(digits_store, tmp_path, device):
    run = pretrain(cuda_recipe(digits_store, tmp_path, name="probe", epochs=1, compile="off", device=device))
    # The CPU case compares the CPU with itself: the same inputs and seed give the same features and probe.
    precision, feature_tolerance, accuracy_points = ("bf16", 5e-2, 3.0) if device == "cuda" else ("fp32", 0.0, 0.0)
    payload = load_checkpoint(run / CHECKPOINT_NAME)
    store = Store.open(digits_store)
    backbone = pretrained_backbone(payload, recipe_from_dict(payload["recipe"], "checkpoint"),
                                   len(store.part("train").labels), run / CHECKPOINT_NAME)
    images = store.part("test").images
    on_device = extract_features(copy.deepcopy(backbone).to(device), images, device,
                                 autocast_dtype=torch.bfloat16 if device == "cuda" else None)
    on_cpu = extract_features(backbone, images, "cpu")
    assert on_device.device.type == device and relative_error(on_device, on_cpu) <= feature_tolerance
    got, want = (linear_eval(run, tmp_path / f"reports-{name}", device=where, precision=how, overrides={"epochs": 100})
                 .reports["bcl:full"]["linear"] for name, where, how in (("device", device, precision),
                                                                          ("cpu", "cpu", "fp32")))
    assert {"many", "medium", "few"} <= set(got) and 0.0 <= got["overall"] <= 100.0
    assert abs(got["overall"] - want["overall"]) <= accuracy_points, (got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_randaugment_ops_give_the_cpu_result_on_the_device(op, device):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=generator).float() / 255
    magnitudes = torch.rand(16, generator=generator) * 30
    signs = torch.where(torch.rand(16, generator=generator) < 0.5, -1.0, 1.0)
    on_device = apply_op(images.to(device), op, magnitudes.to(device), signs.to(device),
                         torch.Generator(device).manual_seed(1))
    # The CPU's op on the draws the device's op made (cutout draws its centres from the device's generator,
    # a stream of its own: drawn again here from the same seed).
    centres = torch.rand(16, 2, generator=torch.Generator(device).manual_seed(1), device=device).cpu()
    draws = StageDraws(torch.full((16,), OPS.index(op)), signs, centres)
    on_cpu = augment_stage(images, draws, magnitudes, torch.zeros(3), "nearest")
    assert on_device.device.type == device
    torch.testing.assert_close(on_device.cpu(), on_cpu, atol=1 / 255 + 1e-5, rtol=0)


@pytest.mark.cuda
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


@pytest.mark.parametrize("device", DEVICES)
def test_resized_crop_gives_the_cpu_result_on_the_device(device):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=generator)
    boxes = torch.tensor([[0, 0, 32, 32], [3, 5, 20, 11], [10, 0, 7, 30], [0, 31, 32, 1]] * 2)
    flip = torch.arange(8) % 3 == 0
    expected = resized_crop(images, boxes, (32, 32), flip)
    got = resized_crop(images.to(device), boxes.to(device), (32, 32), flip.to(device))
    assert got.device.type == device
    torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("backend, image_format", [("ffcv", "raw"), ("ffcv", "jpg"), ("dali", "jpg")])
def test_ffcv_and_dali_loaders_deliver_to_cuda_in_the_native_order_while_the_loop_runs_ahead(
        digits_store, tmp_path, backend, image_format):
    """FFCV's pinned batches copied by fastlt and DALI's mixed (nvJPEG) decoder on the GPU: the native order, the
    pixels (raw: exact; JPEG: within its loss). The GPU is kept ~10 ms a batch behind the loop and every batch
    is kept to the end, so a buffer refilled before its copy ran (FFCV reuses 5) would show as wrong pixels."""
    import numpy as np

    from fastlt.data.backends import make_loader
    from fastlt.data.loader import NativeLoader
    from fastlt.data.store import write_native_store

    pytest.importorskip("ffcv" if backend == "ffcv" else "nvidia.dali")
    native = Store.open(digits_store)
    parts = {name: native.part(name) for name in native.parts}
    store = Store.open(write_native_store(tmp_path / backend, "digits", native.class_names, parts, {},
                                          backend=backend, encode={"image_format": image_format, "quality": 95,
                                                                   "workers": 2}))
    split = np.arange(0, len(parts["train"].labels), 3)
    expected = NativeLoader(parts["train"], split, 25, "cpu", torch.Generator().manual_seed(4))
    loader = make_loader(store, "train", split, 25, torch.device("cuda"), torch.Generator("cpu").manual_seed(4))
    kept = []
    for batch in loader:
        torch.cuda._sleep(20_000_000)  # about 10 ms of GPU time queued before each next batch is asked for
        kept.append(batch)
    assert len(kept) == len(expected) > 5
    for want, got in zip(expected, kept, strict=True):
        assert got.images.is_cuda and got.labels.is_cuda and got.indices.is_cuda
        assert torch.equal(got.indices.cpu(), want.indices) and torch.equal(got.labels.cpu(), want.labels)
        error = (got.images.cpu().float() - want.images.float()).abs().mean()
        assert error == 0 if image_format == "raw" else error < 4.0


@pytest.mark.cuda
def test_fused_sgd_under_an_fp16_loss_scaler_never_waits_on_the_host():
    """build_optimizer's fused SGD takes GradScaler's scale and inf flag on the device; the foreach kernel, for
    contrast, reads the flag every step (torch's sync detector raises on it)."""
    from fastlt.recipe import OptimConfig
    from fastlt.train.run_state import build_optimizer

    def steps(kernel_of: str) -> None:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                    torch.nn.Linear(8 * 14 * 14, 4)).cuda()
        optimizer = build_optimizer(model, OptimConfig(exclude_bn_bias=True), torch.device(kernel_of))
        scaler = torch.amp.GradScaler("cuda")
        images = torch.rand(16, 3, 16, 16, device="cuda")
        for _ in range(3):
            with torch.autocast("cuda", dtype=torch.float16):
                loss = model(images).float().square().mean()
            scaler.scale(loss).backward()
            torch.cuda.set_sync_debug_mode("error")
            try:
                scaler.step(optimizer)
                scaler.update()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            optimizer.zero_grad(set_to_none=True)

    steps("cuda")  # fused: no error
    with pytest.raises(RuntimeError, match="synchroniz"):
        steps("cpu")  # the foreach kernel the CPU gets, here on CUDA tensors
