"""Fixtures shared by the torchrun tests of tests/train."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def launch() -> ModuleType:
    """tests/train/launch.py (torchrun on the CPU), loaded by path: tests/ is not on sys.path."""
    spec = importlib.util.spec_from_file_location("fastlt_tests_launch", Path(__file__).with_name("launch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
