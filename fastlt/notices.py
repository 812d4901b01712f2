"""One-line warnings to stderr, each said once per process, so a loop never repeats one; and silence for
the warnings of others that would only leak into fastlt's output."""
from __future__ import annotations

import importlib
import logging
import sys

import torch

_said: set[str] = set()


def warn_once(message: str) -> None:
    """Print ``warning: <message>`` to stderr the first time this message comes up."""
    if message in _said:
        return
    _said.add(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)


def quiet_cuda_home_probe() -> None:
    """Load torch.utils.cpp_extension, which torch.compile's CPU backend loads, without its warning "No CUDA
    runtime is found, using CUDA_HOME=..." where CUDA is absent: a CUDA toolkit on a machine without a GPU is
    normal for a CPU run, and the line would only leak into fastlt's output. Call it before compiling."""
    if torch.cuda.is_available():
        return
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        importlib.import_module("torch.utils.cpp_extension")  # once per process: later imports say nothing
    finally:
        logger.setLevel(level)
