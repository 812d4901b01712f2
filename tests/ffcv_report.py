"""pytest plugin (tests/conftest.py registers it): FFCV tests skipped because FFCV is missing are not lost in the
scroll. The run's last lines say how many were skipped and why (the import error, and the reason
tools/install_ffcv.sh recorded when it could not install FFCV); with ``CI`` set (``CI=true make test``)
the run fails instead of passing without them. tests/test_ffcv_report.py runs it on a tiny suite.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

CI_VALUES_OFF = ("", "0", "false", "no")


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in CI_VALUES_OFF


def skip_reason(report: pytest.TestReport) -> str:
    """The reason of a skipped test's report (pytest keeps it as (file, line, reason))."""
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


class FfcvReport:
    """Collects the tests skipped for want of FFCV; reports them last and, in CI, fails the run."""

    def __init__(self, status_file: Path, ci: bool) -> None:
        self.status_file = status_file  # tools/install_ffcv.sh writes why it could not install FFCV here
        self.ci = ci
        self.skipped: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and "ffcv" in skip_reason(report).lower():
            self.skipped.append(report.nodeid)

    def reason(self) -> str:
        """Why FFCV is missing: its import error and the install script's own words, where it left them."""
        try:
            importlib.import_module("ffcv")
            imported = "ffcv imports now"
        except Exception as error:  # noqa: BLE001 - a missing shared library is an OSError, not an ImportError
            imported = f"import ffcv: {type(error).__name__}: {error}"
        if self.status_file.is_file():
            return f"{imported}; {self.status_file.read_text().strip()}"
        return f"{imported}; tools/install_ffcv.sh recorded no reason in {self.status_file} (was `make install` run?)"

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # the outermost wrapper: after pytest's short summary (-rs)
    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config):
        yield
        if not self.skipped:
            return
        terminalreporter.write_sep("=", "FFCV", yellow=not self.ci, red=self.ci)
        count = len(self.skipped)
        terminalreporter.write_line(f"FFCV: {count} test{'s' * (count != 1)} skipped: {self.reason()}")
        if self.ci:
            terminalreporter.write_line("FFCV: CI is set, and in CI the FFCV tests must run: this run fails")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.skipped and self.ci and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
