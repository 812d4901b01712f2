"""`fastlt sweep` (fastlt/cli/sweeps.py) through click's CliRunner: every bad input one `error:` line and exit 1,
refused before the sweep folder is made; `--status` on a folder. No run is started."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from fastlt.cli import main
from fastlt.sweep.plan import read_sweep
from fastlt.sweep.state import write_plan

SWEEP = 'recipes = ["digits_lt/simclr"]\nseeds = [1, 2]\n[set]\n"train.epochs" = 1\n'


@pytest.fixture(autouse=True)
def in_tmp_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default sweep folder (sweeps/NAME) lands in tmp_path, and cuda:N means the same on any machine."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def sweep(*args: object) -> Result:
    return CliRunner().invoke(main, ["sweep", *map(str, args)])


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """Exit 1 and a single `error:` line holding every fragment (fastlt.cli.shared.user_errors)."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def sweep_file(folder: Path) -> Path:
    path = folder / "s.toml"
    path.write_text(SWEEP)
    return path


def test_missing_sweep_file(tmp_path: Path) -> None:
    assert_one_line_error(sweep("missing.toml"), "missing.toml", "no such sweep file")
    assert not (tmp_path / "sweeps").exists()


def test_status_of_a_folder_that_is_not_a_sweep() -> None:
    assert_one_line_error(sweep("--status", "nowhere"), "nowhere", "not a sweep folder")


def test_a_folder_without_status(tmp_path: Path) -> None:
    assert_one_line_error(sweep(tmp_path), "a folder", "--status")


def test_missing_cuda_device_refused_before_the_folder_is_made(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_one_line_error(sweep(sweep_file(tmp_path), "--devices", "cuda:3", "--out", out),
                          "--devices cuda:3", "this machine has 0 CUDA devices")
    assert not out.exists()
    assert_one_line_error(sweep(sweep_file(tmp_path), "--devices", "cuda:3"), "cuda:3")
    assert not (tmp_path / "sweeps").exists()  # the default folder, sweeps/s, neither


def test_jobs_with_slurm_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_one_line_error(sweep(sweep_file(tmp_path), "--jobs", "2", "--slurm", "cluster=local", "--out", out),
                          "--slurm", "--jobs")
    assert not out.exists()


def test_bad_slurm_option_refused_before_the_folder_is_made(tmp_path: Path) -> None:
    """run_sweep checks --slurm "before the folder is made" (fastlt/sweep/__init__.py): nothing may be left."""
    out = tmp_path / "out"
    assert_one_line_error(sweep(sweep_file(tmp_path), "--slurm", "cluster=local,bogus_key=1", "--out", out),
                          "--slurm cluster=local,bogus_key=1", "bogus_key")
    assert not out.exists(), sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def test_bad_sweep_file_refused_before_the_folder_is_made(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SWEEP + '[grid]\n"optim.lrr" = [0.1]\n')
    out = tmp_path / "out"
    assert_one_line_error(sweep(path, "--out", out), str(path), "optim.lrr")
    assert not out.exists()


def test_status_prints_each_run(tmp_path: Path) -> None:
    write_plan(tmp_path / "sw", read_sweep(sweep_file(tmp_path)))
    result = sweep("--status", tmp_path / "sw")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"{tmp_path / 'sw'}: 0 done, 0 running, 2 left",
                                          "  simclr_seed1: new, 0 epochs logged",
                                          "  simclr_seed2: new, 0 epochs logged"]
