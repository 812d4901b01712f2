"""The runs of a sweep on this machine: one worker process per slot, a slot per device (or ``per_device`` per
GPU), or ``jobs`` slots sharing the CPU cores. A worker's crash is reported and the others go on.

Each worker sees only its GPU (CUDA_VISIBLE_DEVICES), so everything in it (compile, DALI, cuDNN) binds to
device 0 of its process; CPU workers get an equal share of the cores (OMP_NUM_THREADS). A worker's output
goes to SWEEP_DIR/logs/NAME.log. SIGINT or SIGTERM to the sweep is passed to the workers, which stop at a
step with a checkpoint; the same command continues.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from fastlt.errors import FastltError, RunStopped
from fastlt.sweep.plan import SweepPoint
from fastlt.sweep.state import LOGS_FOLDER, mark, recorded_state

POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: the device name its run records, and the environment that binds it there."""

    label: str  # "cuda:1", "cpu" (as status lines say it)
    device: str  # train.device inside the worker ("cuda" under its CUDA_VISIBLE_DEVICES, or "cpu")
    environment: dict[str, str] = field(default_factory=dict)


def cuda_slots(devices: str, per_device: int) -> list[Slot]:
    """``--devices auto`` (every visible GPU) or ``cuda:0,cuda:2``: ``per_device`` slots on each."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if devices == "auto":
        indices = list(range(count))
    else:
        indices = []
        for name in devices.split(","):
            kind, _, index = name.strip().partition(":")
            if kind != "cuda" or not index.isdigit():
                raise FastltError(f"--devices {devices}: {name.strip()!r} is not a CUDA device (cuda:N, or auto)")
            if int(index) >= count:
                raise FastltError(f"--devices {devices}: no device {name.strip()} (this machine has {count} CUDA "
                                  f"device{'s' if count != 1 else ''})")
            indices.append(int(index))
    return [Slot(f"cuda:{i}", "cuda", {"CUDA_VISIBLE_DEVICES": str(i)}) for i in indices for _ in range(per_device)]


def cpu_slots(jobs: int) -> list[Slot]:
    """``jobs`` slots sharing this process's cores, each told its share."""
    if jobs < 1:
        raise FastltError(f"--jobs {jobs}: must be >= 1")
    threads = max(1, len(os.sched_getaffinity(0)) // jobs)
    return [Slot("cpu", "cpu", {"OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}) for _ in range(jobs)]


@dataclass
class Worker:
    point: SweepPoint
    slot: Slot
    process: subprocess.Popen


class _Signals:
    """SIGINT / SIGTERM to the sweep: remembered here, passed to the workers by the loop."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __enter__(self) -> _Signals:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run_local(sweep_dir: Path, points: list[SweepPoint], slots: list[Slot],
              announce: Callable[[str, str, str, frozenset[str]], None]) -> dict[str, str]:
    """Run ``points`` in the slots, a new one as soon as one ends; returns each run's final state.

    ``announce(name, what, where, running)`` is told every state change ("started", "done", "failed: ..."),
    with the names of the runs then running."""
    queue, running, outcome, passed_on = list(points), [], {}, False
    free = list(slots)
    (Path(sweep_dir) / LOGS_FOLDER).mkdir(parents=True, exist_ok=True)
    with _Signals() as signals:
        while queue or running:
            while queue and free and signals.signum is None:
                point, slot = queue.pop(0), free.pop(0)
                running.append(Worker(point, slot, _start(sweep_dir, point, slot)))
                announce(point.name, "started", slot.label, _names(running))
            if signals.signum is not None and not passed_on:  # once: a second signal ends a worker at once
                for worker in running:
                    if worker.process.poll() is None:
                        worker.process.send_signal(signals.signum)
                queue, passed_on = [], True
            time.sleep(POLL_SECONDS)
            for worker in [w for w in running if w.process.poll() is not None]:
                running.remove(worker)
                free.append(worker.slot)
                outcome[worker.point.name] = state = _ended(sweep_dir, worker)
                announce(worker.point.name, state, worker.slot.label, _names(running))
        if signals.signum is not None:
            name = signal.Signals(signals.signum).name
            raise RunStopped(f"{name}: the sweep stopped, its running runs at their last checkpoints",
                             "run the same `fastlt sweep` command again to continue", signals.signum)
    return outcome


def _names(workers: list[Worker]) -> frozenset[str]:
    return frozenset(worker.point.name for worker in workers)


def _start(sweep_dir: Path, point: SweepPoint, slot: Slot) -> subprocess.Popen:
    log = open(Path(sweep_dir) / LOGS_FOLDER / f"{point.name}.log", "ab")
    with log:
        return subprocess.Popen([sys.executable, "-m", "fastlt.sweep.worker", str(sweep_dir), point.name, slot.device],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **slot.environment})


def _ended(sweep_dir: Path, worker: Worker) -> str:
    """"done", "stopped", or "failed: <why>" from the worker's record and exit code (a killed worker wrote none)."""
    code = worker.process.returncode
    record = recorded_state(sweep_dir, worker.point.name)
    if code == 0 and record["state"] == "done":
        return "done"
    if record["state"] == "failed":
        return f"failed: {record.get('error', f'exit code {code}')}"
    if code >= 128 and record["state"] == "stopped":
        return "stopped"
    if -code in (signal.SIGINT, signal.SIGTERM):  # ended by a stop request before it could say so
        mark(sweep_dir, worker.point.name, "stopped", device=worker.slot.label)
        return "stopped"
    why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    mark(sweep_dir, worker.point.name, "failed", device=worker.slot.label, error=f"{why}; see its log")
    return f"failed: {why}"
