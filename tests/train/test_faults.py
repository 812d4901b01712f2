"""A run loses nothing when it is stopped: signals (and a second one, which ends the stop at once), SIGKILL at
points of the run a real process is held at until killed, a damaged or half-written checkpoint, a torn metrics
line, a full disk, an unwritable run folder."""
from __future__ import annotations

import errno
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

import fastlt.checkpoint as checkpoint_module
import fastlt.train.stopping as stopping
from fastlt.errors import FastltError, RunStopped, SecondSignal
from fastlt.recipe import Recipe, recipe_from_dict
from fastlt.checkpoint import load_checkpoint
from fastlt.progress import Progress
from fastlt.train.stopping import StopRequest
from fastlt.train.run_folder import CHECKPOINT_NAME
from fastlt.train.trainer import pretrain, resume_run


def recipe(store: Path, out_dir: Path, name: str, method: str = "bcl-d", **train) -> Recipe:
    """BCL-D: pruning masks made at an epoch's start and a memory updated every step, both of which a
    resume from the middle of an epoch must carry over. A checkpoint every epoch unless the test says."""
    return recipe_from_dict({
        "data": {"store": str(store)},
        "model": {"width": 4, "projector_hidden": 32, "projector_out": 16},
        "views": {"size": 16},
        "method": {"name": method},
        "optim": {"lr": 0.1, "warmup_epochs": 1},
        "train": {"epochs": 3, "batch_size": 128, "out_dir": str(out_dir), "progress": False, "name": name,
                  "precision": "fp32", "device": "cpu", "log_every": 3, "checkpoint_every": 1, **train},
    }, "test")


def pretrain_command(run_recipe: Recipe, folder: Path) -> list[str]:
    """`fastlt pretrain` arguments for exactly ``run_recipe``: an empty recipe file, every key set on the command
    line, so a real process trains what the in-process reference trained."""
    base = folder / "same.toml"
    base.write_text("")
    return [str(base), *[arg for section, table in run_recipe.to_dict().items() for key, value in table.items()
                         for arg in ("--set", f"{section}.{key}={json.dumps(value)}")]]


def final_state(run: Path) -> tuple[dict, list[dict]]:
    """The last checkpoint's model and the metrics lines without their timings."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        del line["epoch_seconds"], line["images_per_second"]
    return load_checkpoint(run / CHECKPOINT_NAME)["model"], lines


def assert_same_run(run: Path, reference: Path) -> None:
    model, lines = final_state(run)
    expected_model, expected_lines = final_state(reference)
    assert lines == expected_lines  # every epoch once, the same losses, BCL weights and sparsity
    assert model.keys() == expected_model.keys()
    assert all(torch.equal(model[key], expected_model[key]) for key in model)


@pytest.fixture(scope="module")
def reference(digits_store, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end equal to."""
    return pretrain(recipe(digits_store, tmp_path_factory.mktemp("reference"), "reference"))


def signal_after_step(monkeypatch, number: int, signum: int) -> None:
    """Raise ``signum`` in this process right after the run's ``number``-th step, as a user or scheduler would."""
    steps = []
    real_step = Progress.step

    def step_then_signal(progress: Progress) -> None:
        real_step(progress)
        steps.append(1)
        if len(steps) == number:
            signal.raise_signal(signum)

    monkeypatch.setattr(Progress, "step", step_then_signal)


def test_sigterm_mid_epoch_saves_where_it_stopped_and_the_resume_finishes_the_same_run(
        digits_store, tmp_path, reference, monkeypatch, capsys):
    signal_after_step(monkeypatch, 12, signal.SIGTERM)  # 10 batches of 128 an epoch: epoch 2's second
    with pytest.raises(RunStopped, match="SIGTERM: stopped at epoch 2, after batch 2; checkpoint saved") as stop:
        pretrain(recipe(digits_store, tmp_path, "stopped"))
    assert stop.value.signum == signal.SIGTERM
    monkeypatch.undo()
    run = tmp_path / "stopped"
    payload = load_checkpoint(run / CHECKPOINT_NAME)
    assert payload["epoch"] == 1 and payload["step"] == 12 and payload["position"]["batches"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run
    capsys.readouterr()
    resume_run(run)
    assert f"{run}: resuming at epoch 2 of 3, batch 3 of 10\n" in capsys.readouterr().err  # the epoch's batches
    assert_same_run(run, reference)


def test_a_signal_in_an_epochs_last_step_saves_that_epoch(digits_store, tmp_path, reference, monkeypatch):
    signal_after_step(monkeypatch, 10, signal.SIGINT)
    with pytest.raises(RunStopped, match="SIGINT: stopped at the end of epoch 1"):
        pretrain(recipe(digits_store, tmp_path, "stopped", checkpoint_every=2))
    payload = load_checkpoint(tmp_path / "stopped" / CHECKPOINT_NAME)
    assert payload["epoch"] == 1 and "position" not in payload  # saved although checkpoints come every 2 epochs
    monkeypatch.undo()
    resume_run(tmp_path / "stopped", ["train.checkpoint_every=1"])
    assert_same_run(tmp_path / "stopped", reference)


def test_last_and_previous_are_kept_with_milestones(digits_store, tmp_path):
    run = pretrain(recipe(digits_store, tmp_path, "kept", method="simclr", epochs=5, keep_every=2))
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch2.pt", "epoch4.pt", "last.pt", "previous.pt"]
    epochs = {p.name: load_checkpoint(p)["epoch"] for p in folder.iterdir()}
    assert epochs == {"epoch2.pt": 2, "epoch4.pt": 4, "last.pt": 5, "previous.pt": 4}


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(digits_store, tmp_path, reference, capsys):
    run = pretrain(recipe(digits_store, tmp_path, "damaged"), until_epoch=2)
    last = run / CHECKPOINT_NAME
    last.write_bytes(last.read_bytes()[:1000])  # a disk that failed under it
    (run / "checkpoints" / ".last.pt.x1y2.part").write_bytes(b"half a checkpoint")  # a killed write's leftover
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"epoch": 3, "lo')  # an append cut short
    resume_run(run)
    err = capsys.readouterr().err
    assert "warning: " in err and "last.pt: not a readable checkpoint" in err and "previous.pt (epoch 1)" in err
    assert "resuming at epoch 2 of 3" in err
    assert not list((run / "checkpoints").glob(".*.part"))
    assert_same_run(run, reference)
    last.unlink()
    (run / "checkpoints" / "previous.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FastltError, match="previous.pt: not a readable checkpoint"):
        resume_run(run)


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_checkpoints(digits_store, tmp_path, monkeypatch):
    writes = []
    real_save = torch.save

    def save_until_the_disk_fills(payload, handle):
        writes.append(1)
        if len(writes) == 2:
            handle.write(b"partial bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(payload, handle)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_fills)
    with pytest.raises(FastltError, match="last.pt: cannot write the checkpoint \\(No space left on device\\); "
                                          "the checkpoints written before are intact"):
        pretrain(recipe(digits_store, tmp_path, "full", method="simclr"))
    folder = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"] and load_checkpoint(folder / "last.pt")["epoch"] == 1


def test_an_unwritable_run_folder_or_a_small_disk_is_refused_before_training(digits_store, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(FastltError, match="a-file/x: cannot create the run folder"):
        pretrain(recipe(digits_store, blocker, "x"))
    import fastlt.train.run_folder as run_folder

    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(FastltError, match="0 MiB free, and the run needs about [0-9.]+ MiB for its checkpoints"):
        pretrain(recipe(digits_store, tmp_path, "small"))
    assert not (tmp_path / "small").exists()


PAUSED_PRETRAIN = Path(__file__).with_name("paused_pretrain.py")  # `fastlt pretrain` frozen at a chosen point


def wait_until(reached: Callable[[], bool], process: subprocess.Popen, what: str) -> None:
    """Until ``reached()`` while ``process`` runs; fails if it ended first."""
    deadline = time.monotonic() + 180
    while not reached() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if not reached() or process.poll() is not None:
        process.kill()
        pytest.fail(f"the process did not reach {what}: {process.communicate()[1]}")


def wait_for_lines(marker: Path, count: int, process: subprocess.Popen) -> None:
    """Until ``marker`` has ``count`` lines (the paused process reached its count-th point); fails if it ended."""
    wait_until(lambda: marker.exists() and len(marker.read_text().splitlines()) >= count, process,
               f"pause point {count}")


def lines_in(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigkill_five_times_even_inside_a_checkpoint_write_then_resume_equals_one_run(
        digits_store, tmp_path, reference):
    """A real `fastlt pretrain` process (3 epochs of 10 steps) SIGKILLed five times, each while it runs, and
    resumed each time, ends with the reference run's weights and metrics lines. The kills come at points the
    process reaches on any machine (it freezes there until killed): inside epoch 2's checkpoint write (the
    temporary file exists; the write runs in the background, so epoch 3 trains meanwhile and its metrics line
    comes two epochs ahead of last.pt), between an epoch's metrics line and its checkpoint, and after three
    steps drawn at random from the steps a start has left."""
    new_run = pretrain_command(recipe(digits_store, tmp_path, "killed"), tmp_path)
    run, folder = tmp_path / "killed", tmp_path / "killed" / "checkpoints"
    rng = random.Random(0)
    points = ["write:2", "metrics:1", "step", "step", "step", None]
    kills = []
    for start, point in enumerate(points):
        args = ["--resume", str(run)] if start else new_run  # the first kill leaves epoch 1's checkpoint
        if point == "step":  # 30 steps in all, minus those the last checkpoint holds
            point = f"step:{rng.randint(1, 30 - load_checkpoint(folder / 'last.pt')['step'])}"
        if point is None:
            finished = subprocess.run([sys.executable, "-m", "fastlt", "pretrain", *args], capture_output=True,
                                      text=True, timeout=300)
            assert finished.returncode == 0, finished.stderr
            break
        marker = tmp_path / f"paused{start}"
        process = subprocess.Popen([sys.executable, str(PAUSED_PRETRAIN), point, str(marker), "pretrain", *args],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for_lines(marker, 1, process)
        if point == "write:2":  # the training thread goes on to the next checkpoint, which waits for this one
            wait_until(lambda: lines_in(run / "metrics.jsonl") == 3, process, "epoch 3's metrics line")
        seen = {"part": bool(list(folder.glob(".last.pt.*.part"))),
                "checkpoint": load_checkpoint(folder / "last.pt")["epoch"] if (folder / "last.pt").exists() else 0,
                "metrics": len((run / "metrics.jsonl").read_text().splitlines())}
        process.kill()
        process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL  # it was running when the kill came
        kills.append((point, seen))
    assert len(kills) == 5, kills
    assert kills[0] == ("write:2", {"part": True, "checkpoint": 1, "metrics": 3})  # killed mid-write
    assert kills[1] == ("metrics:1", {"part": False, "checkpoint": 1, "metrics": 2})  # ahead of its checkpoint
    assert not list(folder.glob(".*.part"))
    assert_same_run(run, reference)


def test_a_second_signal_while_stopping_ends_the_process_at_once(digits_store, tmp_path, reference):
    """SIGINT after epoch 2's second step stops the run, which writes its checkpoint; a SIGTERM inside that
    write ends the process there: status 143, one line, the write's temporary file gone, epoch 1's checkpoint
    untouched, and the run resumes from it to the reference run."""
    new_run = pretrain_command(recipe(digits_store, tmp_path, "twice"), tmp_path)
    folder, marker = tmp_path / "twice" / "checkpoints", tmp_path / "paused"
    process = subprocess.Popen([sys.executable, str(PAUSED_PRETRAIN), "step:12,write:2", str(marker), "pretrain",
                                *new_run], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(marker, 1, process)  # after epoch 2's second step
    wait_until(lambda: (folder / "last.pt").exists() and not list(folder.glob(".*.part")), process,
               "the end of epoch 1's background write")
    epoch1 = (folder / "last.pt").read_bytes()
    process.send_signal(signal.SIGINT)
    wait_for_lines(marker, 2, process)  # inside the checkpoint write the first signal asked for
    assert list(folder.glob(".last.pt.*.part"))
    process.send_signal(signal.SIGTERM)  # another signal: the same one again within seconds would be a repeat
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "SIGTERM while stopping: ended at once, before its checkpoint was complete; the last complete "
        "checkpoint stays"), err
    assert (folder / "last.pt").read_bytes() == epoch1 and not list(folder.glob(".*.part"))
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1
    resume_run(tmp_path / "twice")
    assert_same_run(tmp_path / "twice", reference)


def test_the_same_signal_again_within_seconds_is_the_same_request(monkeypatch):
    """torchrun forwards the SIGTERM Slurm (or a terminal's Ctrl-C) also sent its workers: a repeat of the first
    signal within REPEAT_SECONDS keeps the stop (and its checkpoint); another signal, or a late repeat, ends it."""
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        assert stop.signal == signal.SIGTERM
        with pytest.raises(SecondSignal, match="^SIGINT while stopping: ended at once"):
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(stopping, "REPEAT_SECONDS", 0.0)
    with StopRequest():
        signal.raise_signal(signal.SIGTERM)
        with pytest.raises(SecondSignal, match="^SIGTERM while stopping"):
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_to_a_real_process_exits_cleanly_with_its_checkpoint(digits_store, tmp_path):
    new_run = pretrain_command(recipe(digits_store, tmp_path, "term", epochs=50), tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "fastlt", "pretrain", *new_run],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "term" / CHECKPOINT_NAME
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("SIGTERM: stopped at ")
    assert f"continue with `fastlt pretrain --resume {tmp_path / 'term'}`" in err
    payload = load_checkpoint(last)
    lines = (tmp_path / "term" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, payload["epoch"] + 1))
