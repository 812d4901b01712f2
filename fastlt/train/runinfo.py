"""What makes a run reproducible, recorded beside its checkpoints."""
from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import fastlt


def git_commit(directory: Path) -> str:
    """The commit of the checkout that holds the fastlt code ('+dirty' if changed), or 'unknown'."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


RECORDED_PACKAGES = ("torch", "torchvision", "numpy", "scikit-learn", "nvidia-dali-cuda130", "ffcv")


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python and of the packages the results depend on (and of ``extra`` ones, where installed)."""
    versions = {"python": platform.python_version(), "fastlt": fastlt.__version__}
    for name in dict.fromkeys(RECORDED_PACKAGES + extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def device_description(device: torch.device) -> dict[str, Any]:
    """The device a run used: CUDA name and capability, or the CPU and its thread count."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(index),
            "capability": list(torch.cuda.get_device_capability(index)),
            "cuda": torch.version.cuda,
        }
    return {"type": device.type, "name": cpu_name(), "threads": torch.get_num_threads()}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_record(device: torch.device, seed: int, recipe_path: str) -> dict[str, Any]:
    """Seed, code commit, package versions, device and command line of a run."""
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "recipe": recipe_path,
        "git_commit": git_commit(Path(fastlt.__file__).resolve().parent),
        "versions": package_versions(),
        "device": device_description(device),
        "command": sys.argv,
        "host": platform.node(),
    }
