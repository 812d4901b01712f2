"""Objectives from installed packages: a real distribution (a ``*.dist-info`` folder with ``entry_points.txt``
beside its module, as pip installs one) on the path, found by importlib.metadata, no faked ``entry_points``."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastlt.errors import FastltError
from fastlt.objectives import OBJECTIVES, PLUGIN_GROUP, load_objective_plugins

ROOT = Path(__file__).resolve().parents[2]
SHIFT = 1000.0  # the plugin's loss is InfoNCE + SHIFT: no built-in objective gives a loss near it

LOSSES = f'''
from fastlt.objectives.infonce import info_nce_per_anchor


def shifted_infonce(z1, z2, temperature, labels=None):
    return info_nce_per_anchor(z1, z2, temperature, labels) + {SHIFT}
'''


def install(site: Path, entry_points: str, modules: dict[str, str]) -> Path:
    """A distribution ``testlosses`` 0.1 in ``site``, laid out as ``pip install --target site`` leaves it."""
    package = site / "testlosses"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, text in modules.items():
        (package / f"{name}.py").write_text(text)
    info = site / "testlosses-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: testlosses\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return site


@pytest.fixture
def plugin_site(tmp_path) -> Path:
    return install(tmp_path / "site", f"[{PLUGIN_GROUP}]\nshifted = testlosses.losses:shifted_infonce\n",
                   {"losses": LOSSES})


@pytest.fixture
def broken_site(tmp_path) -> Path:
    return install(tmp_path / "broken", f"[{PLUGIN_GROUP}]\nbroken = testlosses.broken:loss\n",
                   {"broken": "raise ImportError('testlosses needs a newer torch')\n"})


def test_the_docs_declare_the_group_fastlt_reads():
    assert f'[project.entry-points."{PLUGIN_GROUP}"]' in (ROOT / "docs" / "extending.md").read_text()


def test_an_installed_distribution_registers_its_objective(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    assert "shifted" not in OBJECTIVES
    try:
        load_objective_plugins()
        from testlosses.losses import shifted_infonce

        assert OBJECTIVES["shifted"] is shifted_infonce
    finally:
        OBJECTIVES.pop("shifted", None)
        for name in ("testlosses", "testlosses.losses"):
            sys.modules.pop(name, None)


def test_a_broken_installed_plugin_is_named_in_one_line(broken_site, monkeypatch):
    monkeypatch.syspath_prepend(str(broken_site))
    try:
        with pytest.raises(FastltError, match=r"^objective plugin 'broken' \(testlosses.broken:loss\): cannot load "
                                              r"it \(testlosses needs a newer torch\)$"):
            load_objective_plugins()
    finally:
        sys.modules.pop("testlosses", None)


def fastlt(site: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m fastlt ...` with the plugin's folder on PYTHONPATH, as an installed package would be."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "fastlt", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def tiny_pretrain(store: Path, out: Path, *sets: str) -> list[str]:
    return ["pretrain", str(ROOT / "pipelines" / "digits_lt" / "simclr.toml"), "--device", "cpu",
            *[arg for value in (f"data.store={store}", f"train.out_dir={out}", "train.epochs=1", "train.name=plugin",
                                "model.width=4", "model.projector_hidden=32", "model.projector_out=16",
                                "train.batch_size=256", "train.progress=false", "train.precision=fp32", *sets)
              for arg in ("--set", value)]]


def test_fastlt_pretrain_trains_with_an_installed_objective(plugin_site, digits_store, tmp_path):
    finished = fastlt(plugin_site, *tiny_pretrain(digits_store, tmp_path / "runs", "method.objective=shifted"))
    assert finished.returncode == 0, finished.stderr
    run = Path(finished.stdout.strip().splitlines()[-1])
    assert json.loads((run / "config.json").read_text())["method"]["objective"] == "shifted"
    (line,) = (run / "metrics.jsonl").read_text().splitlines()
    assert SHIFT < json.loads(line)["loss"] < SHIFT + 20  # InfoNCE's mean is at most about log(2B) here


def test_fastlt_pretrain_names_a_broken_installed_plugin_in_one_line(broken_site, digits_store, tmp_path):
    finished = fastlt(broken_site, *tiny_pretrain(digits_store, tmp_path / "runs"))
    assert finished.returncode == 1, finished.stderr
    assert re.fullmatch(r"error: objective plugin 'broken' \(testlosses.broken:loss\): cannot load it "
                        r"\(testlosses needs a newer torch\)\n", finished.stderr), finished.stderr
    assert not (tmp_path / "runs").exists()
