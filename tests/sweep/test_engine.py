"""fastlt.sweep's engines: CPU and CUDA slots (fastlt.sweep.local) and the --slurm options (fastlt.sweep.slurm),
each bad option a one-line error before anything runs. Nothing here starts a worker or submits a job."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import torch

from fastlt.errors import FastltError
from fastlt.sweep import LOCK_FILE, Engine, sweep_lock
from fastlt.sweep.local import cpu_slots, cuda_slots
from fastlt.sweep.slurm import slurm_executor, slurm_parameters

CORES = len(os.sched_getaffinity(0))


@pytest.fixture
def cuda_count(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Pretend this machine has ``n`` CUDA devices (0: none), so the slot tests mean the same on any machine."""

    def pretend(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return pretend


def refused(call, *fragments: str) -> str:
    """The FastltError ``call()`` raises: one line holding every fragment."""
    with pytest.raises(FastltError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_jobs_share_the_cores(cuda_count) -> None:
    cuda_count(0)
    engine = Engine.of(None, 2, 1, None)
    assert len(engine.slots) == 2 and engine.slurm == ""
    for slot in engine.slots:
        assert (slot.label, slot.device) == ("cpu", "cpu")
        assert slot.environment == {"OMP_NUM_THREADS": str(max(1, CORES // 2)), "CUDA_VISIBLE_DEVICES": ""}
    threads = max(1, CORES // 2)
    assert engine.describe() == f"2 at once on cpu ({threads} thread{'s' if threads != 1 else ''} each)"


def test_zero_jobs_refused() -> None:
    refused(lambda: cpu_slots(0), "--jobs 0", "must be >= 1")


def test_more_jobs_than_cores_get_one_thread_each() -> None:
    assert {slot.environment["OMP_NUM_THREADS"] for slot in cpu_slots(CORES * 4)} == {"1"}
    assert len(cpu_slots(CORES * 4)) == CORES * 4


@pytest.mark.parametrize("devices", [None, "auto", "cpu"])
def test_without_cuda_every_default_is_one_cpu_slot(cuda_count, devices: str | None) -> None:
    cuda_count(0)
    (slot,) = Engine.of(devices, None, 1, None).slots
    assert slot.device == "cpu" and slot.environment["OMP_NUM_THREADS"] == str(CORES)


def test_cuda_slots_bind_each_worker_to_its_device(cuda_count) -> None:
    cuda_count(3)
    slots = Engine.of("cuda:0,cuda:2", None, 2, None).slots
    assert [(s.label, s.device, s.environment) for s in slots] == [
        ("cuda:0", "cuda", {"CUDA_VISIBLE_DEVICES": "0"}), ("cuda:0", "cuda", {"CUDA_VISIBLE_DEVICES": "0"}),
        ("cuda:2", "cuda", {"CUDA_VISIBLE_DEVICES": "2"}), ("cuda:2", "cuda", {"CUDA_VISIBLE_DEVICES": "2"})]
    assert [s.label for s in Engine.of("auto", None, 1, None).slots] == ["cuda:0", "cuda:1", "cuda:2"]
    assert [s.label for s in Engine.of(None, None, 1, None).slots] == ["cuda:0", "cuda:1", "cuda:2"]
    assert Engine.of("cpu", None, 1, None).slots[0].device == "cpu"  # --devices cpu on a GPU machine


def test_a_cuda_device_this_machine_lacks(cuda_count) -> None:
    cuda_count(0)
    refused(lambda: Engine.of("cuda:0", None, 1, None), "--devices cuda:0", "no device cuda:0",
            "this machine has 0 CUDA devices")
    cuda_count(1)
    refused(lambda: cuda_slots("cuda:0,cuda:1", 1), "no device cuda:1", "this machine has 1 CUDA device)")


# ids: a test whose id holds the bare word "cuda" would be taken for a CUDA-only test (conftest's marker) and skipped
@pytest.mark.parametrize("devices", ["cpu:0", "gpu0", "cuda:x", "cuda"], ids=["cpu0", "gpu0", "cuda-x", "no-index"])
def test_a_device_that_is_not_cuda_n(cuda_count, devices: str) -> None:
    cuda_count(2)
    refused(lambda: Engine.of(devices, None, 1, None), f"--devices {devices}", "is not a CUDA device")


@pytest.mark.parametrize(("options", "fragments"), [
    ((None, 2, 1, "partition=gpu"), ("--slurm", "--jobs")),
    (("cuda:0", None, 1, "partition=gpu"), ("--slurm", "--devices")),
    (("cuda:0", 2, 1, None), ("--jobs", "--per-device")),
    ((None, None, 0, None), ("--per-device 0",)),
])
def test_conflicting_engine_options(cuda_count, options: tuple, fragments: tuple[str, ...]) -> None:
    cuda_count(1)
    refused(lambda: Engine.of(*options), *fragments)


def test_slurm_engine_keeps_its_text() -> None:
    engine = Engine.of(None, None, 1, "partition=gpu,gpus=4")
    assert (engine.slots, engine.slurm) == ((), "partition=gpu,gpus=4")
    assert engine.describe() == "Slurm (partition=gpu,gpus=4)"


def test_slurm_parameters_map_to_submitit_names_and_processes_per_job() -> None:
    assert slurm_parameters("partition=gpu,gpus=4,time=240,mem=32,account=abc") == ("slurm", {
        "slurm_partition": "gpu", "gpus_per_node": 4, "timeout_min": 240, "mem_gb": 32.0, "slurm_account": "abc"}, 4)
    assert slurm_parameters(" cluster=local , cpus=2,nodes=1,qos=7 ") == (
        "local", {"cpus_per_task": 2, "nodes": 1, "slurm_qos": 7}, 1)
    assert slurm_parameters("") == ("slurm", {}, 1)
    assert slurm_parameters("cluster=local,processes=2") == ("local", {}, 2)  # torchrun on a CPU job
    assert slurm_parameters("gpus=2,processes=1")[2] == 1


@pytest.mark.parametrize(("text", "fragments"), [
    ("gpus=four", ("gpus must be a number", "'four'")),
    ("mem=lots", ("mem must be a number",)),
    ("processes=0", ("processes must be >= 1",)),
    ("partition", ("'partition' is not key=value",)),
    ("partition=gpu,time=", ("'time=' is not key=value",)),
])
def test_bad_slurm_parameters(text: str, fragments: tuple[str, ...]) -> None:
    assert refused(lambda: slurm_parameters(text), *fragments).startswith(f"--slurm {text}: ")


@pytest.mark.parametrize("text", ["cluster=local,bogus_key=1", "partition=gpu,frobnicate=3"])
def test_slurm_options_submitit_refuses(tmp_path: Path, text: str) -> None:
    """submitit's own refusal (an unknown key; no Slurm here) becomes one line naming --slurm."""
    message = refused(lambda: slurm_executor(text, tmp_path / "sweep"))
    assert message.startswith(f"--slurm {text}: "), message
    if "bogus_key" in text:
        assert "bogus_key" in message


def test_runs_per_gpu_on_a_machine_without_one_is_refused(cuda_count) -> None:
    cuda_count(0)
    refused(lambda: Engine.of(None, None, 2, None), "--per-device 2", "use --jobs N")


def test_one_sweep_at_a_time_on_a_folder(tmp_path: Path) -> None:
    """A second sweep on the same folder would start the same runs twice: it is refused while the first holds
    the lock (flock on its own open file, so a second lock in this process conflicts as another process's would),
    and the folder is free again once the first is done."""
    with sweep_lock(tmp_path):
        message = refused(lambda: sweep_lock(tmp_path).__enter__(), str(tmp_path), "another fastlt sweep",
                          f"process {os.getpid()}")
        assert message.startswith(f"{tmp_path}: "), message
    assert (tmp_path / LOCK_FILE).is_file()
    with sweep_lock(tmp_path):
        pass
