"""When FFCV cannot be installed, tools/install_ffcv.sh records why, the test run's last lines say it, and with CI
set the run fails: the script in an environment without FFCV's system libraries, and the plugin the suite
registers (tests/ffcv_report.py) on a tiny suite run by a pytest of its own, with ``ffcv`` made unimportable."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
INSTALL_SCRIPT = TESTS.parent / "tools" / "install_ffcv.sh"

CONFTEST = '''
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("ffcv_report", {plugin!r})
ffcv_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ffcv_report)


def pytest_configure(config):
    config.pluginmanager.register(ffcv_report.FfcvReport(Path({status!r}), ffcv_report.running_in_ci()), "ffcv")
'''

TINY_SUITE = '''
import pytest


def test_without_ffcv():
    pass


def test_with_ffcv():
    pytest.importorskip("ffcv", exc_type=ImportError)
'''


@pytest.fixture(scope="module")
def recorded_reason(tmp_path_factory) -> Path:
    """tools/install_ffcv.sh run for a Python without FFCV, on a PATH with neither pkg-config nor apt-get: it exits
    0 and records why it did not install FFCV in that Python's prefix."""
    folder = tmp_path_factory.mktemp("no_ffcv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True, timeout=120)
    (folder / "empty_bin").mkdir()
    done = subprocess.run([shutil.which("bash"), str(INSTALL_SCRIPT), str(folder / "venv" / "bin" / "python")],
                          env={"PATH": str(folder / "empty_bin")}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "FFCV not installed, its tests will be skipped" in done.stdout, done.stdout
    return folder / "venv" / "ffcv-not-installed.txt"


def run_tiny_suite(tmp_path: Path, status: Path, ffcv_module: str, ci: str | None) -> tuple[int, list[str]]:
    """The tiny suite under a pytest of its own, with ``ffcv`` replaced by ``ffcv_module``'s text."""
    suite, fake = tmp_path / "suite", tmp_path / "fake" / "ffcv"
    suite.mkdir()
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(ffcv_module)
    (suite / "conftest.py").write_text(CONFTEST.format(plugin=str(TESTS / "ffcv_report.py"), status=str(status)))
    (suite / "test_tiny.py").write_text(TINY_SUITE)
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(fake.parent)
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(suite)],
                          cwd=suite, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout.strip().splitlines()


UNIMPORTABLE = "raise ImportError('libturbojpeg.so.0: cannot open shared object file (a test stand-in)')\n"


def test_without_ci_the_last_lines_say_why_ffcv_tests_were_skipped(tmp_path, recorded_reason):
    status, lines = run_tiny_suite(tmp_path, recorded_reason, UNIMPORTABLE, ci=None)
    assert status == 0, lines
    assert "1 passed, 1 skipped" in lines[-1]
    assert lines[-2].startswith("FFCV: 1 test skipped: import ffcv: ImportError: libturbojpeg.so.0"), lines
    assert "tools/install_ffcv.sh: FFCV needs pkg-config libturbojpeg0-dev libopencv-dev" in lines[-2]


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_skipped_ffcv_tests_fail_the_run(tmp_path, recorded_reason, ci):
    status, lines = run_tiny_suite(tmp_path, recorded_reason, UNIMPORTABLE, ci=ci)
    assert status == 1, lines
    assert lines[-3].startswith("FFCV: 1 test skipped: import ffcv: ImportError") and "install_ffcv.sh" in lines[-3]
    assert lines[-2] == "FFCV: CI is set, and in CI the FFCV tests must run: this run fails"


def test_a_missing_reason_file_is_said_too(tmp_path):
    status, lines = run_tiny_suite(tmp_path, tmp_path / "nothing.txt", UNIMPORTABLE, ci="false")
    assert status == 0 and "recorded no reason in" in lines[-2] and "was `make install` run?" in lines[-2], lines


def test_with_ffcv_importable_nothing_is_said_and_ci_passes(tmp_path, recorded_reason):
    status, lines = run_tiny_suite(tmp_path, recorded_reason, "", ci="true")
    assert status == 0 and lines[-1].startswith("2 passed"), lines
    assert not any("FFCV" in line for line in lines)
