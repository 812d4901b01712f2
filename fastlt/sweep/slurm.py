"""The runs of a sweep as Slurm jobs, through submitit: one job array, a job per run.

``--slurm partition=gpu,gpus=4,time=240`` names the jobs' resources (partition, gpus per job, time in
minutes, cpus, mem in GB, nodes; any other key goes to Slurm as submitit's ``slurm_<key>``, and one submitit
does not know is refused before anything is submitted); ``processes=N`` trains each run in N processes
(default: one per GPU). ``cluster=local`` runs the same jobs through
submitit's local executor, on this machine: the path the tests take, and a way to try a sweep file before
queueing it.

A job with several processes pretrains under torchrun and evaluates in the job's own process afterwards
(on CPU jobs the processes talk over gloo: how the tests run this path). On preemption or time-out,
Slurm's warning signal makes submitit requeue the job (``checkpoint``), and the requeued job resumes the
run from its last checkpoint (train.checkpoint_minutes bounds what is lost).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from fastlt.errors import FastltError
from fastlt.sweep.plan import SweepPoint
from fastlt.sweep.point import run_point
from fastlt.sweep.state import recorded_state

SLURM_FOLDER = "slurm"
GENERIC = {"gpus": ("gpus_per_node", int), "time": ("timeout_min", int), "cpus": ("cpus_per_task", int),
           "mem": ("mem_gb", float), "nodes": ("nodes", int)}
POLL_SECONDS = 1.0


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise FastltError("--slurm: the submitit package is not installed (pip install 'fastlt[slurm]')") from None
    return submitit


def slurm_parameters(text: str) -> tuple[str, dict[str, Any], int]:
    """``partition=gpu,gpus=4,time=240`` -> ("slurm", {"slurm_partition": "gpu", "gpus_per_node": 4, ...}, 4): the
    cluster (``cluster=local``: submitit's local executor), submitit's parameters, and the training processes of
    each job (``processes=N``, by default one per GPU, one on a CPU job)."""
    cluster, parameters = "slurm", {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not (equals and key and value):
            raise FastltError(f"--slurm {text}: {item!r} is not key=value")
        if key == "cluster":
            cluster = value
        elif key in GENERIC or key == "processes":
            name, kind = GENERIC.get(key, ("processes", int))
            try:
                parameters[name] = kind(value)
            except ValueError:
                raise FastltError(f"--slurm {text}: {key} must be a number, got {value!r}") from None
        else:
            parameters[f"slurm_{key}"] = int(value) if value.isdigit() else value
    processes = parameters.pop("processes", max(parameters.get("gpus_per_node", 0), 1))
    if processes < 1:
        raise FastltError(f"--slurm {text}: processes must be >= 1")
    return cluster, parameters, processes


def slurm_executor(text: str, sweep_dir: Path) -> Any:
    """The submitit executor for ``--slurm TEXT``, its options checked before any submission."""
    submitit = require_submitit()
    cluster, parameters, _ = slurm_parameters(text)
    with tempfile.TemporaryDirectory() as trial:  # submitit makes its folder at once: a refusal must leave none
        for folder in (Path(trial), Path(sweep_dir) / SLURM_FOLDER):
            try:
                executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
                executor.update_parameters(name="fastlt-sweep", tasks_per_node=1, **parameters)
            except (NameError, ValueError, AssertionError, RuntimeError) as error:
                raise FastltError(f"--slurm {text}: {str(error).splitlines()[0]}") from None
    return executor


class SweepJob:
    """What one Slurm job runs (a submitit checkpointable callable): the run to done, its pretraining under
    torchrun when the job has several processes (one per GPU); requeued as the same call on preemption."""

    def __call__(self, sweep_dir: str, point: SweepPoint, device: str, processes: int, cpus: int) -> str:
        # The job's cores (Slurm's allocation, or what the sweep gave a local job) shared by its processes: torch
        # would otherwise start a thread per core of the whole node.
        cores = int(os.environ.get("SLURM_CPUS_PER_TASK") or cpus)
        if cores:
            os.environ["OMP_NUM_THREADS"] = str(max(1, cores // processes))
            torch.set_num_threads(max(1, cores // processes))
        if processes > 1:
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={processes}", "-m", "fastlt.sweep.worker", sweep_dir, point.name, device,
                            "--train-only"], check=True)
        return run_point(Path(sweep_dir), point, device, train=processes == 1)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue the same call: the run resumes from its checkpoint."""
        return require_submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def run_slurm(sweep_dir: Path, points: list[SweepPoint], executor: Any, slurm: str,
              announce: Callable[[str, str, str, frozenset[str]], None]) -> dict[str, str]:
    """Submit ``points`` as one job array (``--slurm`` options ``slurm``) and follow the jobs to the end; returns
    each run's final state."""
    cluster, parameters, processes = slurm_parameters(slurm)
    device = "cuda" if parameters.get("gpus_per_node", 0) else "cpu"
    # cpus=, else a local job's share of this machine's cores (0: torch's own choice on a Slurm node).
    share = max(1, len(os.sched_getaffinity(0)) // len(points)) if cluster == "local" else 0
    cpus = parameters.get("cpus_per_task") or share
    with executor.batch():
        jobs = {point.name: executor.submit(SweepJob(), str(sweep_dir), point, device, processes, cpus)
                for point in points}
    for name, job in jobs.items():
        announce(name, "submitted", f"job {job.job_id}", frozenset())
    outcome: dict[str, str] = {}
    while len(outcome) < len(jobs):
        time.sleep(POLL_SECONDS)
        for name, job in jobs.items():
            if name not in outcome and job.done():
                outcome[name] = _ended(sweep_dir, name, job)
                announce(name, outcome[name], f"job {job.job_id}", frozenset())
    return outcome


def _ended(sweep_dir: Path, name: str, job: Any) -> str:
    """"done", or "failed: <why>" from the run's record (or the job's exception, for a job that never started)."""
    record = recorded_state(sweep_dir, name)
    if record["state"] == "done":
        return "done"
    if record["state"] == "failed":
        return f"failed: {record.get('error', 'see ' + str(job.paths.stderr))}"
    error = job.exception()
    return f"failed: {str(error).strip().splitlines()[-1] if error else 'ended without a result'}"


