"""fastlt.sweep.state: the sweep folder's record of its runs, read back as states, a status line and --status."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

import fastlt.sweep.point
from fastlt.errors import FastltError, Interrupted, SecondSignal
from fastlt.sweep.plan import SweepPlan, read_sweep
from fastlt.sweep.point import run_point
from fastlt.sweep.state import (PLAN_FILE, SweepStatus, check_plan_change, mark, planned_slots, read_plan,
                                recorded_state, run_dir_of, status_report, sweep_status, write_plan)
from fastlt.train.resume import CHANGEABLE_ON_RESUME

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
    run_dir_of(tmp_path, "a").mkdir(parents=True)
    record(tmp_path, "b", state="failed", error="boom")
    assert recorded_state(tmp_path, "a")["state"] == "done"
    assert recorded_state(tmp_path, "b")["error"] == "boom"


def test_a_done_run_whose_folder_was_removed_is_new_again(tmp_path: Path) -> None:
    """What a refused plan change tells the user to do: remove the run folder, and the run starts anew."""
    record(tmp_path, "a", state="done")
    assert recorded_state(tmp_path, "a") == {"state": "new"}


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


def edited_plan(folder: Path, settings: str) -> SweepPlan:
    """small_plan's sweep file edited: its [set] table replaced by ``settings`` (read, not written to the folder)."""
    path = folder / "edited.toml"
    path.write_text(f'recipes = ["digits_lt/simclr"]\nseeds = [1, 2]\n[set]\n{settings}\n')
    return read_sweep(path)


def test_a_folder_without_a_plan_has_nothing_to_compare(tmp_path: Path) -> None:
    plan = edited_plan(tmp_path, f'"train.epochs" = {EPOCHS}')
    assert check_plan_change(tmp_path, plan, apply=True) == []
    assert not (tmp_path / PLAN_FILE).exists()


def test_a_run_whose_recipe_changed_is_refused(tmp_path: Path) -> None:
    """Its results would no longer be what the sweep file says: one line naming the run, key, old and new value."""
    small_plan(tmp_path)
    run_dir_of(tmp_path, "simclr_seed1").mkdir(parents=True)
    plan = edited_plan(tmp_path, f'"train.epochs" = {EPOCHS}\n"optim.lr" = 0.123')
    old_lr = read_plan(tmp_path).points[0].recipe().optim.lr
    assert old_lr != 0.123
    for apply in (False, True):
        with pytest.raises(FastltError) as caught:
            check_plan_change(tmp_path, plan, apply=apply)
        message = str(caught.value)
        assert "\n" not in message, message
        for fragment in ("simclr_seed1", "optim.lr", repr(old_lr), "0.123", str(tmp_path)):
            assert fragment in message, message


def test_a_changed_run_that_was_never_started_is_not_refused(tmp_path: Path) -> None:
    """No run folder, no results to contradict: the new plan simply replaces the old."""
    small_plan(tmp_path)
    plan = edited_plan(tmp_path, f'"train.epochs" = {EPOCHS}\n"optim.lr" = 0.123')
    assert check_plan_change(tmp_path, plan, apply=True) == []


@pytest.mark.parametrize("apply", [False, True])
def test_more_epochs_for_a_done_run_resumes_it_where_applied(tmp_path: Path, apply: bool) -> None:
    small_plan(tmp_path)
    run_dir_of(tmp_path, "simclr_seed1").mkdir(parents=True)
    mark(tmp_path, "simclr_seed1", "done")
    plan = edited_plan(tmp_path, f'"train.epochs" = {EPOCHS + 2}')
    assert check_plan_change(tmp_path, plan, apply=apply) == ["simclr_seed1"]  # seed2 has no run folder
    state = recorded_state(tmp_path, "simclr_seed1")
    assert state["state"] == ("stopped" if apply else "done")
    if apply:
        assert state["extended_to"] == EPOCHS + 2


def test_fewer_epochs_for_a_started_run_is_refused(tmp_path: Path) -> None:
    """Its checkpoints are past the new last epoch: shortening cannot be honoured by a resume."""
    small_plan(tmp_path)
    run_dir_of(tmp_path, "simclr_seed1").mkdir(parents=True)
    mark(tmp_path, "simclr_seed1", "done")
    with pytest.raises(FastltError, match=f"train.epochs = {EPOCHS}.* now says {EPOCHS - 1}"):
        check_plan_change(tmp_path, edited_plan(tmp_path, f'"train.epochs" = {EPOCHS - 1}'), apply=True)
    assert recorded_state(tmp_path, "simclr_seed1")["state"] == "done"


def test_a_change_that_a_resume_allows_is_not_refused(tmp_path: Path) -> None:
    """How a run is watched (train.log_every) does not change its results."""
    assert "train.log_every" in CHANGEABLE_ON_RESUME
    small_plan(tmp_path)
    run_dir_of(tmp_path, "simclr_seed1").mkdir(parents=True)
    plan = edited_plan(tmp_path, f'"train.epochs" = {EPOCHS}\n"train.log_every" = 7')
    assert plan.points[0].recipe().train.log_every == 7
    assert check_plan_change(tmp_path, plan, apply=True) == []


def test_planned_slots_are_read_back(tmp_path: Path) -> None:
    """--status divides the time left by the runs at once that the sweep was started with."""
    write_plan(tmp_path, small_plan(tmp_path), slots=3)
    assert planned_slots(tmp_path) == 3


def test_status_report_of_a_file_says_it_reads_the_folder(tmp_path: Path) -> None:
    """--status given the sweep file (an easy slip) says what it wants instead of 'not a sweep folder'."""
    small_plan(tmp_path)
    with pytest.raises(FastltError) as caught:
        status_report(tmp_path / "s.toml")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "s.toml") in message and "reads the sweep folder" in message


@pytest.fixture
def train_point_raises(monkeypatch: pytest.MonkeyPatch):
    """Replace run_point's training by one that raises the given exception, recording each call."""
    calls = []

    def install(error: BaseException) -> list:
        def train_point(*args: Any) -> Path:
            calls.append(args)
            raise error

        monkeypatch.setattr(fastlt.sweep.point, "train_point", train_point)
        return calls

    return install


@pytest.mark.parametrize("stop", [Interrupted(signal.SIGTERM), SecondSignal("SIGINT", signal.SIGINT)],
                         ids=["outside-training", "second-signal"])
def test_a_signal_to_a_run_is_recorded_as_stopped_not_failed(tmp_path: Path, train_point_raises,
                                                              stop: KeyboardInterrupt) -> None:
    """An interrupted run is resumed by the next invocation, not reported as broken."""
    plan = small_plan(tmp_path)
    calls = train_point_raises(stop)
    with pytest.raises(type(stop)):
        run_point(tmp_path, plan.points[0], "cpu")
    assert len(calls) == 1
    assert recorded_state(tmp_path, "simclr_seed1")["state"] == "stopped"


def test_a_failing_run_is_recorded_with_its_one_line_reason(tmp_path: Path, train_point_raises) -> None:
    plan = small_plan(tmp_path)
    train_point_raises(FastltError("x: broken"))
    with pytest.raises(FastltError, match="x: broken"):
        run_point(tmp_path, plan.points[0], "cpu")
    state = recorded_state(tmp_path, "simclr_seed1")
    assert (state["state"], state["error"]) == ("failed", "x: broken")


def test_a_done_run_is_not_trained_again(tmp_path: Path, train_point_raises) -> None:
    plan = small_plan(tmp_path)
    mark(tmp_path, "simclr_seed1", "done")
    run_dir_of(tmp_path, "simclr_seed1").mkdir(parents=True)
    calls = train_point_raises(AssertionError("a done run was trained again"))
    assert run_point(tmp_path, plan.points[0], "cpu") == "done"
    assert calls == []
    assert recorded_state(tmp_path, "simclr_seed1")["state"] == "done"
