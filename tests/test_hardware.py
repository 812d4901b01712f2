"""Hardware choices by capability: bf16 only where it is native, no channels_last where oneDNN's AVX2 kernel hangs."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

import fastlt.notices
import fastlt.hardware as device_module
from fastlt.errors import FastltError
from fastlt.models.resnet import build_resnet
from fastlt.hardware import (
    VIEW_COMPILE_MIN_IMAGES,
    CpuFeatures,
    compile_mode,
    resolve_compile,
    resolve_memory_format,
    resolve_precision,
    resolve_view_compile,
    sgd_kernel,
    use_cudnn_benchmark,
)

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def features(aten="AVX512", avx512_bf16=False, amx_bf16=False, onednn_max_isa="", x86=True) -> CpuFeatures:
    return CpuFeatures("test CPU", x86, aten, avx512_bf16, amx_bf16, onednn_max_isa)


@pytest.fixture
def cpu_is(monkeypatch):
    """Make the resolvers see a given CPU."""
    def set_cpu(**kwargs):
        monkeypatch.setattr(device_module, "cpu_features", lambda: features(**kwargs))
    monkeypatch.setattr(fastlt.notices, "_said", set())
    return set_cpu


@pytest.mark.parametrize("cpu, expected", [
    (dict(aten="AVX512", avx512_bf16=True), "bf16"),
    (dict(aten="AVX512", amx_bf16=True), "bf16"),
    (dict(aten="AVX512"), "fp32"),  # AVX-512 without BF16: emulated
    (dict(aten="AVX2"), "fp32"),
    (dict(aten="AVX512", avx512_bf16=True, onednn_max_isa="AVX2"), "fp32"),  # oneDNN capped below bf16
    (dict(aten="AVX512", avx512_bf16=True, onednn_max_isa="AVX512_CORE_BF16"), "bf16"),
])
def test_auto_precision_on_cpu_follows_native_bf16(cpu_is, cpu, expected):
    cpu_is(**cpu)
    precision = resolve_precision("auto", CPU)
    assert precision.name == expected and precision.reason.startswith("auto: ")
    assert (precision.dtype is torch.bfloat16) == (expected == "bf16") and not precision.scale_loss


def test_explicit_bf16_on_an_emulating_cpu_works_and_warns_once(cpu_is, capsys):
    cpu_is(aten="AVX2")
    for _ in range(3):
        assert resolve_precision("bf16", CPU).dtype is torch.bfloat16
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "emulated" in warnings[0]
    with pytest.raises(FastltError, match="^train.precision = 'bf17': unknown precision"):
        resolve_precision("bf17", CPU)
    with pytest.raises(FastltError, match="^--precision bf17: unknown precision"):  # named as the user typed it
        resolve_precision("bf17", CPU, "--precision bf17")


def test_channels_last_is_avoided_for_narrow_strided_1x1_convolutions_on_x86(cpu_is):
    narrow, wide = build_resnet("resnet18", width=8), build_resnet("resnet18", width=16)
    for isa in ({"aten": "AVX2"}, {"aten": "AVX512", "onednn_max_isa": "AVX2"}, {"aten": "AVX512"}):
        cpu_is(**isa)
        name, why = resolve_memory_format("auto", CPU, narrow)
        assert name == "contiguous" and "layer2.0.shortcut.0" in why and "8 input channels" in why
        assert resolve_memory_format("auto", CPU, wide)[0] == "channels_last"
        with pytest.raises(FastltError, match="channels_last is unsafe on this CPU"):
            resolve_memory_format("channels_last", CPU, narrow)
        assert resolve_memory_format("contiguous", CPU, wide) == ("contiguous", "set explicitly")
    cpu_is(aten="DEFAULT", x86=False)
    assert resolve_memory_format("auto", CPU, narrow)[0] == "channels_last"


def test_a_narrow_model_trains_on_an_avx2_cpu(digits_store, tmp_path):
    """End to end with oneDNN limited to AVX2 (what an AVX2-only CPU runs): with channels_last this
    backward hangs for minutes or corrupts memory; auto must pick contiguous and fp32 and finish."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    command = [sys.executable, "-m", "fastlt", "pretrain", "digits_lt/simclr", "--device", "cpu",
               "--set", f"data.store={digits_store}", "--set", f"train.out_dir={tmp_path}",
               "--set", "train.name=avx2", "--set", "train.epochs=1", "--set", "train.batch_size=128",
               "--set", "model.width=4", "--set", "train.progress=false"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    hardware = json.loads((tmp_path / "avx2" / "run.json").read_text())["hardware"]
    assert hardware["precision"] == "fp32" and hardware["memory_format"] == "contiguous", hardware


def test_info_says_what_auto_picks_and_why():
    result = subprocess.run([sys.executable, "-m", "fastlt", "info"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    report = json.loads(result.stdout)
    cpu = report["auto"]["cpu"]
    assert cpu["precision"] == "fp32" and "bf16" in cpu["precision_reason"]
    assert cpu["compile"] is False and report["cpu"]["onednn_max_isa"] == "AVX2"
    assert "contiguous" in cpu["memory_format"]


def test_views_compile_on_cuda_and_on_a_cpu_only_for_runs_that_repay_it(monkeypatch):
    cuda = torch.device("cuda")
    assert resolve_view_compile("auto", cuda, 0)[0] is True
    assert resolve_view_compile("auto", CPU, VIEW_COMPILE_MIN_IMAGES - 1)[0] is False
    assert resolve_view_compile("auto", CPU, VIEW_COMPILE_MIN_IMAGES)[0] is True
    assert resolve_view_compile("on", CPU, 0) == (True, "set explicitly")
    assert resolve_view_compile("off", cuda, 10**9) == (False, "set explicitly")
    monkeypatch.setattr(device_module, "compile_usable", lambda: (False, "no C++ compiler"))
    assert resolve_view_compile("auto", cuda, 0) == (False, "auto: off (no C++ compiler)")
    with pytest.raises(FastltError, match="train.compile_views"):
        resolve_view_compile("yes", CPU, 0)


def test_step_compile_max_is_cuda_graphs_on_cuda_and_the_default_mode_on_a_cpu():
    cuda = torch.device("cuda")
    compiled, why = resolve_compile("max", cuda)
    assert compiled and "CUDA graphs" in why and compile_mode("max", cuda) == "max-autotune"
    assert resolve_compile("max", CPU)[0] is True and compile_mode("max", CPU) is None
    assert compile_mode("on", cuda) is None and compile_mode("auto", cuda) is None
    with pytest.raises(FastltError, match=r"train.compile: unknown value 'fast' \(expected auto, on, off or max\)"):
        resolve_compile("fast", cuda)
    with pytest.raises(FastltError, match="train.compile_views"):  # the views have no CUDA graph mode
        resolve_view_compile("max", cuda, 0)


def test_cudnn_benchmarks_its_convolutions_on_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert use_cudnn_benchmark(CPU).startswith("off") and torch.backends.cudnn.benchmark is False
    assert use_cudnn_benchmark(torch.device("cuda")).startswith("on") and torch.backends.cudnn.benchmark is True


def host_syncs():
    """tests/methods/test_host_sync.py's HostSyncs: what would make a CUDA step wait, recorded on the CPU."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("host_sync", ROOT / "tests" / "methods" / "test_host_sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HostSyncs()


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 6 * 6, 10))
    return model.to(memory_format=torch.channels_last)


def test_sgd_is_fused_for_cuda_and_foreach_elsewhere_and_keeps_its_kernel_through_a_checkpoint():
    """Picked by the device's type, so the CUDA choice is built here on CPU tensors (torch has a fused CPU SGD)."""
    from fastlt.recipe import OptimConfig
    from fastlt.train.run_state import build_optimizer

    config = OptimConfig(exclude_bn_bias=True)
    fused = build_optimizer(small_model(), config, torch.device("cuda"))
    foreach = build_optimizer(small_model(), config, CPU)
    assert all(group["fused"] and not group["foreach"] for group in fused.param_groups)
    assert all(group["foreach"] and not group["fused"] for group in foreach.param_groups)
    assert getattr(fused, "_step_supports_amp_scaling", False)  # GradScaler hands it the scale and inf flag
    assert sgd_kernel(torch.device("cuda", 1)) == {"fused": True, "foreach": False}
    old = foreach.state_dict()  # a checkpoint of another kernel (before fused SGD: foreach on CUDA)
    fused.load_state_dict(old)
    assert all(group["fused"] and not group["foreach"] for group in fused.param_groups)
    foreach.load_state_dict(fused.state_dict())
    assert all(group["foreach"] and not group["fused"] for group in foreach.param_groups)


def sgd_run(optimizer_for: Callable[[torch.nn.Module], torch.optim.Optimizer], scaled: bool):
    """Four steps with a changing lr (the third's gradients overflow when ``scaled``, an fp16-style loss scaler
    on): the weights, the scaler's last scale and every host sync of the scaler's steps."""
    model = small_model()
    optimizer = optimizer_for(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, enabled=scaled)
    generator = torch.Generator().manual_seed(1)
    syncs = []
    for step in range(4):
        for group in optimizer.param_groups:
            group["lr"] = 0.1 * (step + 1)
        scaler.scale(model(torch.rand(8, 3, 8, 8, generator=generator)).square().mean()).backward()
        if step == 2 and scaled:
            next(model.parameters()).grad[0, 0, 0, 0] = float("inf")
        with host_syncs() as watch:
            scaler.step(optimizer)
            scaler.update()
        syncs += watch.found
        optimizer.zero_grad(set_to_none=True)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), scaler.get_scale(), syncs


@pytest.mark.parametrize("scaled", [False, True])
def test_fused_sgd_steps_as_foreach_does_and_a_loss_scaler_then_reads_no_scalar(scaled):
    """CUDA's fused kernel (run here on CPU tensors) against the CPU's foreach one: the same weights to float
    rounding, the same skipped step and scale; with the scaler on, only the fused step never reads a scalar.
    foreach gives the bits of the per-tensor loop, the CPU's kernel before, so CPU runs did not change."""
    from fastlt.recipe import OptimConfig
    from fastlt.train.run_state import build_optimizer, parameter_groups

    config = OptimConfig(exclude_bn_bias=True)
    fused, fused_scale, fused_syncs = sgd_run(lambda m: build_optimizer(m, config, torch.device("cuda")), scaled)
    foreach, foreach_scale, foreach_syncs = sgd_run(lambda m: build_optimizer(m, config, CPU), scaled)
    loop = sgd_run(lambda m: torch.optim.SGD(parameter_groups(m, config.weight_decay, True), lr=config.lr,
                                             momentum=config.momentum, foreach=False), scaled)[0]
    torch.testing.assert_close(fused, foreach, rtol=1e-6, atol=1e-8)
    assert torch.equal(foreach, loop) and fused_scale == foreach_scale
    assert fused_syncs == []
    assert bool(foreach_syncs) == scaled  # the unfused step reads the inf flag: the check sees a sync
    if scaled:
        assert fused_scale == 2.0 ** 9  # halved once, by the overflowing step
