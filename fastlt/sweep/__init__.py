"""``fastlt sweep``: many runs (recipes x a grid of settings x splits x seeds) on every device of a node or as
Slurm jobs, each pretrained, evaluated, and tabulated with the others.

plan (the sweep file read into named points) -> an engine runs the points not done (local: worker processes
on devices or cores; slurm: submitit jobs), each through point.run_point -> table (mean +- std per method and
setting, with the plots). state is the sweep folder's record of every run, which makes a second invocation
skip finished runs, resume stopped ones and start the rest, and lets ``--status`` read a sweep running
elsewhere.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastlt.errors import FastltError
from fastlt.evaluate.plots import PlotResult
from fastlt.files import write_text_atomic
from fastlt.progress import say
from fastlt.sweep.local import Slot, cpu_slots, cuda_slots, run_local
from fastlt.sweep.plan import SweepPlan, check_stores, read_sweep
from fastlt.sweep.slurm import run_slurm, slurm_executor
from fastlt.sweep.state import RUNS_FOLDER, check_plan_change, recorded_state, sweep_status, write_plan
from fastlt.sweep.table import TABLE_MD, write_sweep_table

SOURCE_COPY = "sweep.toml"  # the sweep file as it was when this folder was last started
LOCK_FILE = ".lock"  # held by the fastlt sweep working on the folder


@dataclass(frozen=True)
class SweepResult:
    """What a finished sweep wrote: its table.md, and its plots (None when no run finished)."""

    table: Path
    plots: PlotResult | None


@dataclass(frozen=True)
class Engine:
    """Where the runs go: ``slots`` on this machine, or Slurm (``slurm``: the --slurm text)."""

    slots: tuple[Slot, ...] = ()
    slurm: str = ""

    @classmethod
    def of(cls, devices: str | None, jobs: int | None, per_device: int, slurm: str | None) -> Engine:
        """The engine the options name, checked: a device that does not exist is a one-line error here."""
        if slurm is not None:
            if devices is not None or jobs is not None:
                raise FastltError("--slurm: the jobs' devices come from Slurm; leave out --devices and --jobs")
            return cls(slurm=slurm)
        if per_device < 1:
            raise FastltError(f"--per-device {per_device}: must be >= 1")
        if devices == "cpu" or (devices in (None, "auto") and not cuda_slots("auto", 1)):
            if per_device > 1:
                raise FastltError(f"--per-device {per_device}: runs per GPU, and the runs go to the CPU here; "
                                  "use --jobs N for N runs at once on the CPU")
            return cls(tuple(cpu_slots(jobs or 1)))
        if jobs is not None:
            raise FastltError("--jobs divides the CPU cores; with GPUs use --per-device for runs per GPU")
        return cls(tuple(cuda_slots(devices or "auto", per_device)))

    def executor(self, sweep_dir: Path) -> Any:
        """submitit's executor for a Slurm engine (its options checked), None for this machine."""
        return slurm_executor(self.slurm, sweep_dir) if self.slurm else None

    def describe(self) -> str:
        if self.slurm:
            return f"Slurm ({self.slurm})"
        labels = [slot.label for slot in self.slots]
        threads = self.slots[0].environment.get("OMP_NUM_THREADS")
        return f"{len(labels)} at once on {', '.join(dict.fromkeys(labels))}" + \
            (f" ({threads} thread{'s' if threads != '1' else ''} each)" if threads else "")


def run_sweep(sweep_file: Path, sweep_dir: Path, engine: Engine) -> SweepResult:
    """Run every point of ``sweep_file`` not done yet, then write the table; returns table.md."""
    plan = read_sweep(sweep_file)
    return run_plan(plan, sweep_dir, engine, source=Path(sweep_file).read_text(encoding="utf-8"))


def run_plan(plan: SweepPlan, sweep_dir: Path, engine: Engine, source: str | None = None) -> SweepResult:
    """Run every point of ``plan`` not done yet in ``sweep_dir``, then write the table; returns table.md.
    ``source``: the sweep file's text, kept beside the runs.

    Everything is checked before the folder is made or changed: the engine (a bad --slurm option), and that
    the runs already in the folder were made with the recipes the plan now gives them. A run that fails is
    reported and the others go on; the table holds the runs that finished, and the command then fails naming
    the ones that did not (the same command runs them again)."""
    sweep_dir = Path(sweep_dir)
    executor = engine.executor(sweep_dir)
    check_stores(plan)
    check_plan_change(sweep_dir, plan, apply=False)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with sweep_lock(sweep_dir):
        extended = check_plan_change(sweep_dir, plan, apply=True)
        write_plan(sweep_dir, plan, max(len(engine.slots), 1))
        if source is not None:
            write_text_atomic(sweep_dir / SOURCE_COPY, source)
        return _run(sweep_dir, plan, engine, executor, extended)


def _run(sweep_dir: Path, plan: SweepPlan, engine: Engine, executor: Any, extended: list[str]) -> SweepResult:
    todo = [point for point in plan.points if recorded_state(sweep_dir, point.name)["state"] != "done"]
    say(f"sweep {sweep_dir}: {_count(len(plan.points), 'run')}, {len(plan.points) - len(todo)} done already"
        f"{f' ({len(extended)} of them to train for more epochs)' if extended else ''}; {engine.describe()}")
    others = sorted(set(path.name for path in (sweep_dir / RUNS_FOLDER).glob("*")) - {p.name for p in plan.points})
    if others:
        say(f"{_count(len(others), 'run')} in {sweep_dir / RUNS_FOLDER} not in this sweep file (left out of its "
            f"table): {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}")

    def announce(name: str, what: str, where: str, running: frozenset[str]) -> None:
        status = sweep_status(sweep_dir, plan, running)
        say(f"[{status.line(max(len(engine.slots), 1))}] {name}: {what} ({where})")

    if not todo:
        outcome = {}
    elif engine.slurm:
        outcome = run_slurm(sweep_dir, todo, executor, engine.slurm, announce)
    else:
        outcome = run_local(sweep_dir, todo, list(engine.slots), announce)
    return _finish(sweep_dir, plan, outcome)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """One ``fastlt sweep`` at a time on a folder: a second would start the same runs twice."""
    with open(sweep_dir / LOCK_FILE, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise FastltError(f"{sweep_dir}: another fastlt sweep is running on this folder ({lock.read().strip()}); "
                              "follow it with --status") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


def _finish(sweep_dir: Path, plan: SweepPlan, outcome: dict[str, str]) -> SweepResult:
    done = [p.name for p in plan.points if recorded_state(sweep_dir, p.name)["state"] == "done"]
    plots = None
    if done:
        written, plots = write_sweep_table(sweep_dir, plan, done)
        for path in [*written, *plots.written]:
            say(f"wrote {path}")
    failed = {name: what for name, what in outcome.items() if what != "done"}
    if failed:
        first = next(iter(failed.items()))
        raise FastltError(f"sweep {sweep_dir}: {len(failed)} of {len(plan.points)} runs did not finish "
                          f"({first[0]}: {first[1]}{'; ...' if len(failed) > 1 else ''}); logs in {sweep_dir}/logs; "
                          "run the same command again to retry them")
    return SweepResult(sweep_dir / TABLE_MD, plots)
