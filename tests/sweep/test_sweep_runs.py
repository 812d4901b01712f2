"""Whole sweeps on the digits: 2 recipes x 2 seeds, tiny widths, as worker processes (``--jobs 2``) with one
worker killed mid-run and the sweep run again, and as jobs of submitit's local executor (the ``--slurm`` path)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

EPOCHS = 4
SWEEP = """recipes = ["digits_lt/simclr", "digits_lt/bcl-d"]
seeds = [1, 2]
[set]
"data.store" = "{store}"
"train.epochs" = {epochs}
"train.checkpoint_every" = 1
"train.progress" = false
"model.width" = 4
"model.projector_hidden" = 16
"model.projector_out" = 8
"views.size" = 8
"train.batch_size" = 256
"eval.epochs" = 2
"eval.knn" = [1]
"""
NAMES = ["simclr_seed1", "simclr_seed2", "bcl-d_seed1", "bcl-d_seed2"]
VICTIM = "bcl-d_seed1"


def sweep_file(tmp_path: Path, store: Path) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(SWEEP.format(store=store, epochs=EPOCHS))
    return path


def fastlt(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastlt", *args]


def table_cells(markdown: str) -> dict[tuple[str, str], list[str]]:
    """(method, evaluation) -> the row's accuracy cells."""
    rows = {}
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("simclr", "bcl-d"):
            rows[(cells[0], cells[3])] = cells[6:11]
    return rows


def expected_cells(runs: Path, method: str, evaluation: str) -> list[str]:
    """mean +- std (ddof 0) over the method's two seeds, straight from the runs' eval.json reports."""
    reports = [json.loads(next((runs / f"{method}_seed{seed}" / "eval").glob("*/eval.json")).read_text())
               for seed in (1, 2)]
    values = [[report["reports"][evaluation][column] for report in reports]
              for column in ("overall", "many", "medium", "few", "group_std")]
    return [f"{np.mean(v):.2f} +- {np.std(v):.2f}" for v in values]


def files_of(run_dir: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in run_dir.rglob("*") if path.is_file()}


def test_a_sweep_on_two_cpu_jobs_survives_a_killed_run_and_finishes_it_on_the_next_invocation(
        tmp_path: Path, digits_store: Path) -> None:
    sweep_dir, grid = tmp_path / "sweep", sweep_file(tmp_path, digits_store)
    command = fastlt("sweep", str(grid), "--out", str(sweep_dir), "--jobs", "2")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, state = sweep_dir / "runs" / VICTIM / "metrics.jsonl", sweep_dir / "state" / f"{VICTIM}.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # the victim mid-run: an epoch and its checkpoint written, more to go
        logged = metrics.read_text().splitlines() if metrics.is_file() else []
        if 1 <= len(logged) < EPOCHS and (sweep_dir / "runs" / VICTIM / "checkpoints" / "last.pt").is_file():
            os.kill(json.loads(state.read_text())["pid"], signal.SIGKILL)
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"{VICTIM} never ran mid-way: {first.communicate()}")
    _, said = first.communicate(timeout=300)
    assert first.returncode == 1, said
    assert said.splitlines()[-1] == (f"error: sweep {sweep_dir}: 1 of 4 runs did not finish ({VICTIM}: failed: "
                                     f"killed by SIGKILL); logs in {sweep_dir}/logs; run the same "
                                     "command again to retry them")
    status = subprocess.run(fastlt("sweep", "--status", str(sweep_dir)), capture_output=True, text=True)
    assert status.stdout.splitlines()[0] == f"{sweep_dir}: 3 done, 0 running, 1 failed, 0 left"
    killed_at = len(metrics.read_text().splitlines())

    finished = {name: files_of(sweep_dir / "runs" / name) for name in NAMES if name != VICTIM}
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == str(sweep_dir / "table.md")
    assert f"sweep {sweep_dir}: 4 runs, 3 done already; 2 at once on cpu" in second.stderr
    assert [line.split("] ")[1] for line in second.stderr.splitlines() if "started" in line] == [f"{VICTIM}: started (cpu)"]
    for name, files in finished.items():  # nothing ran twice: the finished runs' files are untouched
        assert files_of(sweep_dir / "runs" / name) == files, name
    run = json.loads((sweep_dir / "runs" / VICTIM / "run.json").read_text())
    assert [entry["from_epoch"] for entry in run["resumes"]] == [killed_at]  # resumed where its checkpoint was
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))

    cells = table_cells((sweep_dir / "table.md").read_text())
    assert set(cells) == {(m, e) for m in ("simclr", "bcl-d") for e in ("linear", "knn@1")}
    for (method, evaluation), row in cells.items():
        assert row == expected_cells(sweep_dir / "runs", method, evaluation), (method, evaluation)
    assert (sweep_dir / "plots" / "loss.png").is_file() and (sweep_dir / "table.csv").is_file()


def test_the_same_sweep_through_submitits_local_executor(tmp_path: Path, digits_store: Path) -> None:
    """The --slurm engine end to end without a cluster: a job array of four, each job a run to its report."""
    sweep_dir = tmp_path / "sweep"
    grid = sweep_file(tmp_path, digits_store)
    # The local executor starts all four jobs at once, each with its share of the cores (with all of them each,
    # the jobs fought over 2 cores: 89 s against 27 s).
    everything = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    done = subprocess.run(fastlt("sweep", str(grid), "--out", str(sweep_dir), "--slurm", "cluster=local,time=20"),
                          capture_output=True, text=True, timeout=600, env=everything)
    assert done.returncode == 0, done.stderr
    threads = {json.loads((sweep_dir / "runs" / name / "run.json").read_text())["device"]["threads"] for name in NAMES}
    assert threads == {max(1, len(os.sched_getaffinity(0)) // 4)}, threads
    submitted = [line for line in done.stderr.splitlines() if ": submitted (job " in line]
    assert sorted(line.split("] ")[1].split(":")[0] for line in submitted) == sorted(NAMES)
    for name in NAMES:
        assert json.loads((sweep_dir / "state" / f"{name}.json").read_text())["state"] == "done"
        assert len((sweep_dir / "runs" / name / "metrics.jsonl").read_text().splitlines()) == EPOCHS
    cells = table_cells((sweep_dir / "table.md").read_text())
    for (method, evaluation), row in cells.items():
        assert row == expected_cells(sweep_dir / "runs", method, evaluation), (method, evaluation)
    again = subprocess.run(fastlt("sweep", str(grid), "--out", str(sweep_dir), "--slurm", "cluster=local"),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "4 runs, 4 done already" in again.stderr and "submitted" not in again.stderr


def test_a_job_with_several_processes_pretrains_under_torchrun_then_evaluates(
        tmp_path: Path, digits_store: Path) -> None:
    """--slurm processes=2 on CPU jobs: the job runs torchrun (two gloo ranks) for the pretraining and evaluates in
    its own process, the path a multi-GPU job takes."""
    grid = tmp_path / "one.toml"
    grid.write_text(SWEEP.format(store=digits_store, epochs=2).replace(
        'recipes = ["digits_lt/simclr", "digits_lt/bcl-d"]\nseeds = [1, 2]', 'recipes = ["digits_lt/simclr"]'))
    sweep_dir = tmp_path / "sweep"
    done = subprocess.run(fastlt("sweep", str(grid), "--out", str(sweep_dir), "--slurm", "cluster=local,processes=2"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run = sweep_dir / "runs" / "simclr"
    assert json.loads((run / "run.json").read_text())["distributed"]["world"] == 2
    assert json.loads((sweep_dir / "state" / "simclr.json").read_text())["state"] == "done"
    assert table_cells((sweep_dir / "table.md").read_text())[("simclr", "linear")][0] == \
        f"{json.loads(next((run / 'eval').glob('*/eval.json')).read_text())['reports']['linear']['overall']:.2f}"
