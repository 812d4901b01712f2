"""Timing and the machine description: a number without the machine it came from is not comparable.

The timer takes the best of several timed calls after a warm-up, with the device
synchronised around each, because the best run is the one least disturbed by the rest of
the machine (CUDA kernels are asynchronous: without a sync the timer sees only the launch).
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from typing import Any, Callable

import torch

from fastlt.hardware import cpu_features
from fastlt.train.runinfo import cpu_name, device_description, package_versions

# CPU flags that decide which kernels run: the vector width, and native bf16 (AVX512-BF16, AMX).
CPU_FLAGS = {"avx2": "avx2", "avx512f": "avx512_f", "avx512_bf16": "avx512_bf16", "amx_bf16": "amx_bf16",
             "amx_tile": "amx_tile"}
EXTRA_PACKAGES = ("kornia", "pillow", "nvidia-dali-cuda130")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer stops when the work is done, not when it was launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Best wall time in seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls, device synchronised.

    The warm-up pays one-off costs (allocator, lazy initialisation, worker start-up, compile)
    that a steady-state rate must not include; time them separately with ``timed_once``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def timed_once(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds, result) of one call, device synchronised: for one-off costs such as a cold compile."""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - started, result


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, as taskset or a container sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_flags() -> dict[str, bool]:
    """The CPU flags that matter for speed, as torch reports them (/proc/cpuinfo where torch cannot)."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if capabilities:
        return {flag: bool(capabilities.get(key, False)) for flag, key in CPU_FLAGS.items()}
    try:
        listed = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo", encoding="utf-8")
                       if line.startswith("flags")), [])
    except OSError:
        listed = []
    return {flag: flag in listed for flag in CPU_FLAGS}


def machine_description(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, the flags that matter, the GPU if any, and the versions: stored with every result."""
    features = cpu_features()
    gpu = None
    if torch.cuda.is_available():
        index = device.index if device.type == "cuda" and device.index is not None else torch.cuda.current_device()
        gpu = torch.cuda.get_device_name(index)
    return {
        "cpu": {
            "name": cpu_name(),
            "cores": usable_cores(),
            "logical_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "flags": cpu_flags(),
            "torch_capability": features.aten_capability,
            "onednn_max_isa": features.onednn_max_isa or "unset",
        },
        "gpu": gpu,
        "device": device_description(device),
        "platform": platform.platform(),
        "versions": package_versions(EXTRA_PACKAGES),
    }


def as_record(value: Any) -> Any:
    """Dataclasses and tuples as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_record(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): as_record(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_record(item) for item in value]
    return value
