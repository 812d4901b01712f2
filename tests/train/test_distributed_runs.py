"""Whole runs under torchrun (gloo processes): every rank's own random streams across a resume (3 processes), a
worker killed and restarted by torchrun --max-restarts with --resume-if-exists (2), a stop signal sent to the
launcher and its workers at once (3); and the one-process rules of launching (device per rank, a named run started
or resumed)."""
from __future__ import annotations

import json
from collections.abc import Callable
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from fastlt.errors import FastltError
from fastlt.recipe import recipe_from_dict
from fastlt.checkpoint import load_checkpoint
from fastlt.train.distributed import Ranks, launched_ranks, restart_hazard
from fastlt.train.run_folder import CHECKPOINT_NAME
from fastlt.train.run_state import process_device
from fastlt.train.trainer import pretrain_or_resume


HOOKED_WORKER = Path(__file__).with_name("hooked_worker.py")  # `fastlt` with a crash or a mark after a step


def run_args(store: Path, out: Path, name: str, **train: object) -> list[str]:
    """`fastlt pretrain` arguments: BCL-D on digits-LT (pruning masks, a memory, and U drawn from each rank's view
    generator), width 8, 3 epochs of 8 global batches of 64, a checkpoint every epoch."""
    settings = {"data.store": str(store), "train.out_dir": str(out), "train.name": name, "model.width": 8,
                "model.projector_hidden": 16, "model.projector_out": 8, "views.size": 16, "train.batch_size": 64,
                "train.epochs": 3, "train.progress": False, "train.precision": "fp32", "train.device": "cpu",
                "train.checkpoint_every": 1, **{f"train.{key}": value for key, value in train.items()}}
    return ["digits_lt/bcl-d", *[arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(value)}")]]


def final_state(run: Path) -> tuple[dict, list[dict]]:
    """The last checkpoint's model and the metrics lines without their timings."""
    lines = [{key: value for key, value in json.loads(line).items() if not key.endswith(("seconds", "second"))}
             for line in (run / "metrics.jsonl").read_text().splitlines()]
    return load_checkpoint(run / CHECKPOINT_NAME)["model"], lines


def assert_same_run(run: Path, reference: Path) -> None:
    model, lines = final_state(run)
    expected_model, expected_lines = final_state(reference)
    assert lines == expected_lines
    assert model.keys() == expected_model.keys()
    assert all(torch.equal(model[key], expected_model[key]) for key in model), "weights differ"


@pytest.fixture(scope="module")
def whole(digits_store, tmp_path_factory, launch) -> Callable[[int], Path]:
    """The uninterrupted run of N processes every interrupted one of N must end equal to, bit for bit (each N run
    once, when first asked for)."""
    runs: dict[int, Path] = {}

    def run(processes: int) -> Path:
        if processes not in runs:
            out = tmp_path_factory.mktemp(f"whole{processes}")
            done = launch.torchrun("-m", "fastlt", "pretrain", *run_args(digits_store, out, "whole"),
                                   processes=processes)
            assert done.returncode == 0, done.stderr[-3000:]
            runs[processes] = out / "whole"
        return runs[processes]
    return run


def test_each_rank_keeps_its_own_random_streams_across_a_resume(digits_store, tmp_path, whole, launch):
    first = launch.torchrun("-m", "fastlt", "pretrain", *run_args(digits_store, tmp_path, "split"), "--until-epoch", "1",
                            processes=3)
    assert first.returncode == 0, first.stderr[-3000:]
    streams = [rank["views"] for rank in load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)["rng"]["ranks"]]
    assert len(streams) == 3 and all(not torch.equal(streams[a], streams[b]) for a, b in ((0, 1), (0, 2), (1, 2)))
    second = launch.torchrun("-m", "fastlt", "pretrain", "--resume", str(tmp_path / "split"), processes=3)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_same_run(tmp_path / "split", whole(3))  # had a rank drawn rank 0's crops and U, the weights would differ


def test_torchrun_restarts_a_killed_worker_and_the_run_resumes_to_the_same_end(digits_store, tmp_path, whole, launch):
    command = [str(HOOKED_WORKER), "crash:12", "pretrain", *run_args(digits_store, tmp_path, "restarted"),
               "--resume-if-exists"]  # rank 1 dies in epoch 2, after epoch 1's checkpoint
    done = launch.torchrun(*command, max_restarts=1, env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming at epoch 2 of 3" in done.stderr  # the second attempt found the first's checkpoint
    assert done.stdout.strip().splitlines() == [str(tmp_path / "restarted")]
    assert_same_run(tmp_path / "restarted", whole(2))
    again = launch.torchrun("-m", "fastlt", "pretrain", *run_args(digits_store, tmp_path, "restarted"))
    assert again.returncode == 1 and again.stderr.count("run folder exists already") == 2  # both ranks, no hang


def test_sigterm_to_torchrun_and_its_workers_at_once_stops_every_rank_mid_epoch(digits_store, tmp_path, launch):
    """Slurm signals every process of a step, and torchrun forwards its own SIGTERM: each worker gets it twice.
    One stop follows, agreed by the three ranks at the same step within moments (not at an epoch's end 150 steps
    away), with its checkpoint; rank 0 alone says so."""
    args = run_args(digits_store, tmp_path, "signalled", batch_size=8, epochs=20, log_every=10_000, monitor_every=0)
    args += ["--set", "data.split=\"\""]  # the whole train part: 149 steps an epoch
    marker = tmp_path / "training"
    process = subprocess.Popen(launch.torchrun_command(str(HOOKED_WORKER), f"mark:3:{marker}", "pretrain", *args,
                                                        processes=3),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=launch.one_thread(),
                               start_new_session=True)
    run = tmp_path / "signalled"
    deadline = time.monotonic() + 180
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, process.communicate()[1][-3000:]
    os.killpg(process.pid, signal.SIGTERM)  # torchrun and its workers; torchrun then forwards its own
    signalled = time.monotonic()
    _, err = process.communicate(timeout=120)
    assert time.monotonic() - signalled < 20, err[-3000:]  # well inside torchrun's (and Slurm's) 30 s grace
    payload = load_checkpoint(run / CHECKPOINT_NAME)
    assert "position" in payload and 0 < payload["position"]["batches"] < 149, err[-3000:]
    assert len(payload["rng"]["ranks"]) == 3
    assert [line for line in err.splitlines() if line.startswith("SIGTERM: stopped at")] == [
        f"SIGTERM: stopped at epoch {payload['position']['epoch']}, after batch {payload['position']['batches']}; "
        f"checkpoint saved; continue with `fastlt pretrain --resume {run}`"]


def test_a_named_run_is_started_or_resumed_and_nothing_else_is_touched(digits_store, tmp_path, capsys):
    def recipe(name: str = "named"):
        return recipe_from_dict({"data": {"store": str(digits_store)}, "model": {"width": 8},
                                 "train": {"epochs": 2, "batch_size": 128, "out_dir": str(tmp_path), "name": name,
                                           "progress": False, "precision": "fp32", "device": "cpu"}}, "test")
    with pytest.raises(FastltError, match="--resume-if-exists: the run needs a fixed name"):
        pretrain_or_resume(recipe(""), "test")
    run = tmp_path / "named"
    run.mkdir()
    (run / "config.json").write_text("{}")  # a start killed before its first checkpoint
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".last.pt.a1b2.part").write_bytes(b"half")
    assert pretrain_or_resume(recipe(), "test", until_epoch=1) == run
    assert "no checkpoint yet (stopped before its first); starting the run again" in capsys.readouterr().err
    assert load_checkpoint(run / CHECKPOINT_NAME)["epoch"] == 1
    pretrain_or_resume(recipe(), "test")
    assert "resuming at epoch 2 of 2" in capsys.readouterr().err and load_checkpoint(run / CHECKPOINT_NAME)["epoch"] == 2
    pretrain_or_resume(recipe(), "test")
    assert "run already complete (epoch 2 of 2)" in capsys.readouterr().err
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(FastltError, match="kept: has no checkpoint to resume, and holds notes.txt"):
        pretrain_or_resume(recipe("kept"), "test")
    assert (kept / "notes.txt").read_text() == "mine"


def test_each_process_binds_its_own_gpu_and_a_launch_without_local_rank_is_refused(monkeypatch):
    assert process_device(torch.device("cuda"), Ranks(1, 2, 1)) == torch.device("cuda", 1)  # auto: cuda:LOCAL_RANK
    with pytest.raises(FastltError, match="train.device cuda:3: under torchrun each process takes cuda:LOCAL_RANK"):
        process_device(torch.device("cuda", 3), Ranks(1, 2, 1))  # every rank would take cuda:3
    assert process_device(torch.device("cuda", 3), Ranks()) == torch.device("cuda", 3)  # one process: as named
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("RANK", "9")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(FastltError, match="RANK 9 of WORLD_SIZE 16 without LOCAL_RANK"):
        launched_ranks()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched_ranks() == Ranks(9, 16, 1)


@pytest.mark.parametrize("restarts, agent_store, hazard", [("1", "True", True), ("1", "False", False),
                                                            ("0", "True", False)])
def test_restarts_over_the_agents_shared_store_are_named_as_a_hazard(monkeypatch, restarts, agent_store, hazard):
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", restarts)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", agent_store)
    assert bool(restart_hazard()) == hazard
