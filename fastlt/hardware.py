"""Hardware choices (device, precision, memory format, compile, kernels), each by capability, each with a reason.

What is fast depends on the machine, not on the device type: bf16 autocast runs 10-15x
slower than fp32 on a CPU without bf16 instructions (oneDNN emulates it), and oneDNN's
channels_last kernels hang or corrupt memory for narrow strided 1x1 convolutions (see
``memory_format_hazard``).
Every resolver returns its choice together with the reason, which ``fastlt info`` prints
and the run records.
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fastlt.errors import FastltError
from fastlt.notices import warn_once

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
COMPILE_CHOICES = ("auto", "on", "off")
STEP_COMPILE_CHOICES = (*COMPILE_CHOICES, "max")  # train.compile; max: autotuned kernels replayed as CUDA graphs


def resolve_device(name: str, typed: str | None = None) -> torch.device:
    """'auto' picks the first CUDA device when there is one, else the CPU.

    Errors name ``typed``, what the user typed for the device (``--device cuda``); by default the recipe's
    train.device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = typed or f"train.device = {name!r}"
    expected = "expected auto, cpu, cuda or cuda:N"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FastltError(f"{where}: unknown device ({expected})") from None
    if device.type not in ("cpu", "cuda"):
        raise FastltError(f"{where}: not supported ({expected})")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastltError(f"{where}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FastltError(f"{where}: no such CUDA device (this machine has {torch.cuda.device_count()})")
    return device


SAFE_1X1_INPUT_CHANNELS = 16  # below this, memory_format_hazard applies on x86 CPUs


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU and torch's oneDNN build can do, as torch reports it."""

    name: str
    x86: bool
    aten_capability: str  # the vector ISA of torch's own kernels: "AVX512", "AVX2", "DEFAULT", ...
    avx512_bf16: bool  # bf16 dot-product instructions
    amx_bf16: bool  # bf16 matrix tiles
    onednn_max_isa: str  # the ONEDNN_MAX_CPU_ISA cap, "" when unset

    @property
    def onednn_avx512(self) -> bool:
        """Whether oneDNN (convolutions) runs its AVX-512 kernels rather than the AVX2 ones."""
        cap = self.onednn_max_isa.upper()
        allowed = cap in ("", "ALL", "DEFAULT") or cap.startswith(("AVX512", "AVX10"))
        return self.x86 and self.aten_capability == "AVX512" and allowed

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 matrix maths runs in hardware (AVX512-BF16 or AMX-BF16) rather than emulated."""
        cap = self.onednn_max_isa.upper()
        allowed = cap in ("", "ALL", "DEFAULT") or "BF16" in cap or "AMX" in cap or cap.startswith("AVX10")
        return (self.avx512_bf16 or self.amx_bf16) and self.onednn_avx512 and allowed


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """Read once per process from torch.cpu.get_capabilities() and the environment."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    machine = platform.machine().lower()
    return CpuFeatures(
        name=str(capabilities.get("cpu_name") or platform.processor() or machine),
        x86=machine in ("x86_64", "amd64", "i686", "x86"),
        aten_capability=torch.backends.cpu.get_cpu_capability(),
        avx512_bf16=bool(capabilities.get("avx512_bf16", False)),
        amx_bf16=bool(capabilities.get("amx_bf16", False)),
        onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")),
    )


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32), whether gradients need loss scaling (fp16 only), and why it was chosen."""

    name: str
    dtype: torch.dtype | None
    scale_loss: bool
    reason: str = ""

    def autocast(self, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
        """A factory of autocast contexts for this precision on this device."""
        if self.dtype is None:
            return contextlib.nullcontext
        return lambda: torch.autocast(device.type, dtype=self.dtype)


PRECISION_TYPES = {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, True), "fp32": (None, False)}


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """(native bf16 on this device, why): CUDA as torch reports it; a CPU only with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return supported, f"CUDA device {'supports' if supported else 'does not support'} bf16"
    features = cpu_features()
    if features.native_bf16:
        return True, f"CPU {features.name} has {'AMX-BF16' if features.amx_bf16 else 'AVX512-BF16'}"
    if features.onednn_max_isa and (features.avx512_bf16 or features.amx_bf16):
        return False, f"ONEDNN_MAX_CPU_ISA={features.onednn_max_isa} keeps oneDNN from the CPU's bf16 instructions"
    return False, f"CPU {features.name} has no AVX512-BF16 or AMX-BF16: bf16 is emulated, about 10x slower than fp32"


def resolve_precision(name: str, device: torch.device, typed: str | None = None) -> Precision:
    """'auto' = bf16 where the device runs it natively, else fp16 + loss scaling on CUDA, else fp32.

    An explicit 'bf16' on a CPU that only emulates it still works, with a one-time warning. Errors name
    ``typed``, what the user typed for the precision (``--precision fp16``); by default the recipe's train.precision.
    """
    where = typed or f"train.precision = {name!r}"
    if name not in PRECISIONS:
        raise FastltError(f"{where}: unknown precision (expected one of {', '.join(PRECISIONS)})")
    native, why = bf16_support(device)
    if name == "auto":
        if native:
            chosen, reason = "bf16", f"auto: {why}"
        elif device.type == "cuda":
            chosen, reason = "fp16", f"auto: {why}; fp16 with loss scaling instead"
        else:
            chosen, reason = "fp32", f"auto: {why}"
    else:
        chosen, reason = name, "set explicitly"
        if name == "bf16" and not native:
            if device.type == "cuda":
                raise FastltError(f"{where}: bf16 is not supported on {device} ({why})")
            warn_once(f"{where} on this CPU: {why}")
    dtype, scale_loss = PRECISION_TYPES[chosen]
    return Precision(chosen, dtype, scale_loss, reason)


def memory_format_hazard(model: nn.Module, device: torch.device) -> str:
    """Why channels_last must not be used for this model here, or "" when it is safe.

    oneDNN's backward-weights kernels for a strided 1x1 convolution with few input channels
    in channels_last memory fail on x86 CPUs (torch 2.14.1): the AVX2 kernel hangs for
    minutes or corrupts memory with 2..7 input channels (a ResNet-18 of width 4 on a batch of
    256 never finishes one backward), and the AVX-512 kernel corrupts memory ("double free",
    segfaults) with 4..12 input channels on odd batch sizes, which a partial last batch can
    be. The gradients are right whenever it survives. From 16 input channels on, every case
    tried ran and matched the contiguous layout, so narrower models train contiguous.
    """
    if device.type != "cpu" or not cpu_features().x86:
        return ""
    for layer_name, module in model.named_modules():
        if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride != (1, 1)
                and module.in_channels < SAFE_1X1_INPUT_CHANNELS):
            return (f"{layer_name} is a strided 1x1 convolution with {module.in_channels} input channels, "
                    "which oneDNN's channels_last kernels cannot train (they hang or corrupt memory)")
    return ""


def resolve_memory_format(name: str, device: torch.device, model: nn.Module) -> tuple[str, str]:
    """(memory format name, why): 'auto' is channels_last unless ``memory_format_hazard`` applies.

    channels_last measured faster than contiguous for a CIFAR ResNet-18 on CPU from width 16
    up (AVX2 and AVX-512 alike; docs/recipes.md, "What `auto` chooses") and is what GPU convolutions want.
    """
    if name not in ("auto", *MEMORY_FORMATS):
        raise FastltError(f"train.memory_format: unknown {name!r} (expected auto, channels_last or contiguous)")
    hazard = memory_format_hazard(model, device)
    if name == "auto":
        if hazard:
            return "contiguous", f"auto: {hazard}"
        return "channels_last", "auto: the faster layout for convolutions"
    if name == "channels_last" and hazard:
        raise FastltError(f"train.memory_format: channels_last is unsafe on this CPU: {hazard}; use auto or contiguous")
    return name, "set explicitly"


VIEW_COMPILE_MIN_IMAGES = 1_000_000  # training images per run from which `auto` compiles the views on a CPU


def compile_usable() -> tuple[bool, str]:
    """Whether torch.compile can run here (a C++ compiler for CPU; Triton for CUDA)."""
    if not hasattr(torch, "compile"):
        return False, "torch.compile missing"
    try:
        from torch._inductor import cpp_builder  # noqa: F401
    except ImportError as error:
        return False, f"inductor unavailable ({error})"
    if torch.cuda.is_available():
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "CUDA present but Triton is not installed"
    return True, "inductor"


def resolve_view_compile(name: str, device: torch.device, images_per_run: int) -> tuple[bool, str]:
    """(compile the view pipeline, why): 'auto' compiles on CUDA, and on a CPU for runs long enough to repay it.

    On a CPU the compiled views save ~60-210 us per image (two views; `fastlt bench views` on a Zen 5
    and a Zen 3) for a cold compile of ~13-40 s per batch shape, two shapes a run: about 0.4M
    augmented images repay it, so ``auto`` waits for 2.5 times that.
    """
    if name not in COMPILE_CHOICES:
        raise FastltError(f"train.compile_views: unknown value {name!r} (expected auto, on or off)")
    if name != "auto":
        return name == "on", "set explicitly"
    usable, why = compile_usable()
    if not usable:
        return False, f"auto: off ({why})"
    if device.type == "cuda":
        return True, f"auto: on for CUDA ({why})"
    if images_per_run >= VIEW_COMPILE_MIN_IMAGES:
        return True, f"auto: on, the run augments {images_per_run:,} images, enough to repay a CPU compile"
    return False, (f"auto: off, the run augments {images_per_run:,} images; a CPU compile repays itself "
                   f"from about {VIEW_COMPILE_MIN_IMAGES:,}")


def resolve_compile(name: str, device: torch.device) -> tuple[bool, str]:
    """(compile the step, why): 'auto' compiles on CUDA only; a CPU model step gains nothing for ~40 s a compile.
    'max' compiles as 'on' does, in ``compile_mode``'s mode."""
    if name not in STEP_COMPILE_CHOICES:
        raise FastltError(f"train.compile: unknown value {name!r} (expected auto, on, off or max)")
    if name == "auto":
        if device.type != "cuda":
            return False, "auto: off on CPU (no speed-up for a model step, ~40 s per cold compile)"
        usable, why = compile_usable()
        return usable, f"auto: {'on' if usable else 'off'} for CUDA ({why})"
    if name == "max":
        if device.type == "cuda":
            return True, "set explicitly: max (max-autotune: autotuned kernels replayed as CUDA graphs)"
        return True, "max on a CPU: compiled in the default mode (CUDA graphs need CUDA)"
    return name == "on", "set explicitly"


def compile_mode(name: str, device: torch.device) -> str | None:
    """torch.compile's mode for the step under ``train.compile = name``: "max-autotune" for max on CUDA, whose
    CUDA graphs replay a step's kernels with one launch (the step's shapes are static: one graph per batch
    shape, two a run), else inductor's default (None)."""
    return "max-autotune" if name == "max" and device.type == "cuda" else None


def use_cudnn_benchmark(device: torch.device) -> str:
    """On CUDA let cuDNN time its convolution algorithms once per input shape and keep the fastest (a step
    has static shapes, at most two a run: the full and the last batch); returns why, for the run's record.
    Process-wide, and nothing to do on a CPU."""
    if device.type != "cuda":
        return "off: cuDNN runs on CUDA only"
    torch.backends.cudnn.benchmark = True
    return "on for CUDA: each static input shape's fastest convolution algorithm, timed once"


def sgd_kernel(device: torch.device) -> dict[str, bool]:
    """torch SGD's implementation for parameters on ``device``. CUDA: the fused kernel, which takes the fp16 loss
    scale and the inf check on the device, so GradScaler.step reads no scalar per step (with the multi-tensor
    one it reads the inf flag, a host sync, every step). Elsewhere the multi-tensor (foreach) one: on a CPU the
    bits of the per-tensor loop, torch's default there (the fused kernel agrees to float rounding; tested)."""
    return {"fused": True, "foreach": False} if device.type == "cuda" else {"fused": False, "foreach": True}
