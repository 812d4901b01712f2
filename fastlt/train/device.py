"""Device, precision and compile choices, each behind a capability check with a CPU path."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from fastlt.errors import FastltError


def resolve_device(name: str) -> torch.device:
    """'auto' picks the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FastltError(f"train.device: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastltError(f"train.device: {name!r} requested but CUDA is not available here")
    return device


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32) and whether gradients need loss scaling (fp16 only)."""

    name: str
    dtype: torch.dtype | None
    scale_loss: bool

    def autocast(self, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
        """A factory of autocast contexts for this precision on this device."""
        if self.dtype is None:
            return contextlib.nullcontext
        return lambda: torch.autocast(device.type, dtype=self.dtype)


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast works on every CPU torch supports and on CUDA devices that report it."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def resolve_precision(name: str, device: torch.device) -> Precision:
    """'auto' = bf16 where supported, else fp16 with loss scaling on CUDA, else fp32."""
    if name == "auto":
        if bf16_supported(device):
            name = "bf16"
        elif device.type == "cuda":
            name = "fp16"
        else:
            name = "fp32"
    if name == "bf16":
        if not bf16_supported(device):
            raise FastltError(f"train.precision: bf16 is not supported on {device}")
        return Precision("bf16", torch.bfloat16, scale_loss=False)
    if name == "fp16":
        return Precision("fp16", torch.float16, scale_loss=True)
    if name == "fp32":
        return Precision("fp32", None, scale_loss=False)
    raise FastltError(f"train.precision: unknown precision {name!r} (expected auto, bf16, fp16 or fp32)")


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


def resolve_compile(name: str, device: torch.device) -> bool:
    """'auto' compiles on CUDA only: on CPU it costs ~40 s per cold compile and buys nothing here."""
    if name == "auto":
        return device.type == "cuda" and compile_usable()[0]
    if name == "on":
        return True
    if name == "off":
        return False
    raise FastltError(f"train.compile: unknown value {name!r} (expected auto, on or off)")
