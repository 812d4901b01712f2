"""fastlt.sweep.state: the sweep folder's record of its runs, read back as states, a status line and --status."""
from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fastlt.errors import FastltError
from fastlt.sweep.plan import SweepPlan, read_sweep
from fastlt.sweep.state import (PLAN_FILE, SweepStatus, read_plan, recorded_state, run_dir_of, status_report,
                                sweep_status, write_plan)

EPOCHS = 4


def small_plan(folder: Path) -> SweepPlan:
    """simclr_seed1 and simclr_seed2, EPOCHS epochs each; the sweep file in ``folder``, the plan written there."""
    path = folder / "s.toml"
    path.write_text(f'recipes = ["digits_lt/simclr"]\nseeds = [1, 2]\n[set]\n"train.epochs" = {EPOCHS}\n')
    plan = read_sweep(path)
    write_plan(folder, plan)
    return plan


def record(sweep_dir: Path, name: str, **fields: Any) -> None:
    """A state file as a worker leaves it (state.mark), with the host and pid chosen by the test."""
    fields = {"time": 0.0, "host": socket.gethostname(), "pid": os.getpid(), **fields}
    (sweep_dir / "state").mkdir(parents=True, exist_ok=True)
    (sweep_dir / "state" / f"{name}.json").write_text(json.dumps(fields))


def log_epochs(sweep_dir: Path, name: str, seconds: list[float]) -> None:
    """metrics.jsonl with one line per epoch, as the trainer logs them (only epoch_seconds is read here)."""
    run_dir = run_dir_of(sweep_dir, name)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "epoch_seconds": s}) + "\n"
                                                   for i, s in enumerate(seconds)))


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped), so os.kill(pid, 0) finds none."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_plan_round_trip(tmp_path: Path) -> None:
    plan = small_plan(tmp_path)
    assert (tmp_path / PLAN_FILE).is_file()
    again = read_plan(tmp_path)
    assert again == plan
    assert again.points[1].recipe().train.seed == 2  # the overrides survive as overrides, not as text


def test_read_plan_of_a_folder_that_is_not_a_sweep(tmp_path: Path) -> None:
    with pytest.raises(FastltError) as caught:
        read_plan(tmp_path)
    assert "\n" not in str(caught.value)
    assert str(tmp_path) in str(caught.value) and "not a sweep folder" in str(caught.value)
    (tmp_path / PLAN_FILE).write_text("{not json")
    with pytest.raises(FastltError, match="unreadable"):
        read_plan(tmp_path)


def test_a_run_without_a_state_file_is_new(tmp_path: Path) -> None:
    assert recorded_state(tmp_path, "simclr_seed1") == {"state": "new"}


def test_a_run_folder_with_checkpoints_but_no_state_file_is_stopped(tmp_path: Path) -> None:
    (run_dir_of(tmp_path, "simclr_seed1") / "checkpoints").mkdir(parents=True)
    assert recorded_state(tmp_path, "simclr_seed1")["state"] == "stopped"
    assert recorded_state(tmp_path, "simclr_seed2")["state"] == "new"


def test_running_record_of_a_dead_process_is_stopped(tmp_path: Path) -> None:
    record(tmp_path, "dead", state="running", pid=dead_pid())
    assert recorded_state(tmp_path, "dead")["state"] == "stopped"


def test_running_record_of_a_live_process_is_running(tmp_path: Path) -> None:
    record(tmp_path, "alive", state="running", pid=os.getpid(), device="cpu")
    assert recorded_state(tmp_path, "alive") == {"state": "running", "time": 0.0, "host": socket.gethostname(),
                                                 "pid": os.getpid(), "device": "cpu"}


def test_running_record_from_another_host_is_taken_at_its_word(tmp_path: Path) -> None:
    """Its pid cannot be checked from here (the dead pid is this host's), so it stays running."""
    record(tmp_path, "far", state="running", pid=dead_pid(), host=socket.gethostname() + "-elsewhere")
    assert recorded_state(tmp_path, "far")["state"] == "running"


def test_done_and_failed_records_are_read_as_written(tmp_path: Path) -> None:
    record(tmp_path, "a", state="done", pid=dead_pid())
    record(tmp_path, "b", state="failed", error="boom")
    assert recorded_state(tmp_path, "a")["state"] == "done"
    assert recorded_state(tmp_path, "b")["error"] == "boom"


@pytest.mark.parametrize(("states", "eta", "slots", "line"), [
    ({"a": "done", "b": "running", "c": "failed", "d": "stopped", "e": "new"}, 480.0, 2,
     "1 done, 1 running, 1 failed, 2 left; about 4m 00s left"),
    ({"a": "done", "b": "new"}, 90.0, 1, "1 done, 0 running, 1 left; about 1m 30s left"),
    ({"a": "done", "b": "running"}, None, 1, "1 done, 1 running, 0 left"),
    ({"a": "done", "b": "done"}, 50.0, 1, "2 done, 0 running, 0 left"),  # nothing left: no ETA
    ({"a": "failed"}, 30.0, 1, "0 done, 0 running, 1 failed, 0 left"),
])
def test_status_line_counts_and_eta(states: dict[str, str], eta: float | None, slots: int, line: str) -> None:
    assert SweepStatus(states, eta).line(slots) == line


def test_sweep_status_eta_is_the_mean_epoch_time_times_the_epochs_left(tmp_path: Path) -> None:
    plan = small_plan(tmp_path)
    record(tmp_path, "simclr_seed1", state="done")
    log_epochs(tmp_path, "simclr_seed1", [10.0] * EPOCHS)
    log_epochs(tmp_path, "simclr_seed2", [20.0])
    status = sweep_status(tmp_path, plan)
    assert status.states == {"simclr_seed1": "done", "simclr_seed2": "new"}
    assert status.eta_seconds == pytest.approx(12.0 * (EPOCHS - 1))  # mean of 10,10,10,10,20; 3 epochs left
    assert sweep_status(tmp_path, plan, frozenset({"simclr_seed2"})).states["simclr_seed2"] == "running"


def test_sweep_status_without_logged_epochs_has_no_eta(tmp_path: Path) -> None:
    assert sweep_status(tmp_path, small_plan(tmp_path)).eta_seconds is None


def test_status_report_lines(tmp_path: Path) -> None:
    small_plan(tmp_path)
    record(tmp_path, "simclr_seed1", state="failed", error="boom: out of memory")
    record(tmp_path, "simclr_seed2", state="running", device="cuda:1")
    log_epochs(tmp_path, "simclr_seed1", [5.0, 5.0])
    assert status_report(tmp_path).splitlines() == [
        # 5 s per epoch times the epochs not trained: 2 of the failed run, 4 of the running one
        f"{tmp_path}: 0 done, 1 running, 1 failed, 0 left; about {5 * (EPOCHS - 2 + EPOCHS)}s left",
        "  simclr_seed1: failed, 2 epochs logged: boom: out of memory",
        f"  simclr_seed2: running on cuda:1 ({socket.gethostname()}), 0 epochs logged",
    ]


def test_status_report_of_a_folder_that_is_not_a_sweep(tmp_path: Path) -> None:
    with pytest.raises(FastltError, match="not a sweep folder"):
        status_report(tmp_path / "nowhere")
