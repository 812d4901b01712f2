"""Where each run of a sweep stands, read from the sweep folder alone, so ``fastlt sweep --status`` works from
any shell on any machine that sees the folder.

SWEEP_DIR/plan.json holds the points; SWEEP_DIR/state/NAME.json the last thing the run's worker said
(running on which device and host, failed and why, done); SWEEP_DIR/runs/NAME is the run folder. A run
whose worker was killed keeps "running" in its file; ``status`` tells it from a live one by its host and
process id where it can (the same host) and calls it stopped.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastlt.errors import FastltError
from fastlt.files import write_json_atomic
from fastlt.progress import format_duration
from fastlt.recipe import Override
from fastlt.sweep.plan import SweepPlan, SweepPoint

PLAN_FILE = "plan.json"
STATE_FOLDER = "state"
RUNS_FOLDER = "runs"
LOGS_FOLDER = "logs"
STATES = ("done", "running", "failed", "stopped", "new")  # the order a status line counts them in


def run_dir_of(sweep_dir: Path, name: str) -> Path:
    return Path(sweep_dir) / RUNS_FOLDER / name


def write_plan(sweep_dir: Path, plan: SweepPlan) -> None:
    """The points as JSON, for the workers and for ``--status`` (which need not read the sweep file again)."""
    points = [{**asdict(point), "recipe_path": str(point.recipe_path),
               "overrides": [[o.assignment, o.typed] for o in point.overrides]} for point in plan.points]
    write_json_atomic(Path(sweep_dir) / PLAN_FILE, {"source": str(plan.source), "points": points})


def read_plan(sweep_dir: Path) -> SweepPlan:
    """The plan a sweep folder was started with; a one-line error for a folder that is not one."""
    path = Path(sweep_dir) / PLAN_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FastltError(f"{sweep_dir}: not a sweep folder (no {PLAN_FILE}; start one with `fastlt sweep FILE`)") from None
    except (OSError, ValueError) as error:
        raise FastltError(f"{path}: unreadable ({error})") from None
    points = tuple(SweepPoint(**{**p, "recipe_path": Path(p["recipe_path"]), "shots": tuple(p["shots"]),
                                 "overrides": tuple(Override(*o) for o in p["overrides"])}) for p in document["points"])
    return SweepPlan(Path(document["source"]), points)


def mark(sweep_dir: Path, name: str, state: str, **details: Any) -> None:
    """Record what a run's worker is doing (``state`` is running, failed, stopped or done)."""
    record = {"state": state, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), **details}
    write_json_atomic(Path(sweep_dir) / STATE_FOLDER / f"{name}.json", record)


def recorded_state(sweep_dir: Path, name: str) -> dict[str, Any]:
    """The run's state file, or {"state": "new"} (or "stopped" for a run folder with a checkpoint) without one."""
    path = Path(sweep_dir) / STATE_FOLDER / f"{name}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {"state": "new"}
    if record["state"] == "running" and not _alive(record):
        record["state"] = "stopped"
    if record["state"] == "new" and (run_dir_of(sweep_dir, name) / "checkpoints").is_dir():
        record["state"] = "stopped"
    return record


def _alive(record: dict[str, Any]) -> bool:
    """Whether a "running" record's process lives; a process on another host is taken at its word."""
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def epochs_logged(run_dir: Path) -> list[float]:
    """The logged epoch times of a run (metrics.jsonl), none for a run not started."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [float(json.loads(line)["epoch_seconds"]) for line in lines if line.strip()]


@dataclass(frozen=True)
class SweepStatus:
    """Counts by state, the runs by state, and the expected time of what is left."""

    states: dict[str, str]  # name -> state
    eta_seconds: float | None

    def line(self, slots: int = 1) -> str:
        """"3 done, 2 running, 1 failed, 2 left; about 4.0 min left": one line for a log or a terminal."""
        counts = {state: sum(1 for s in self.states.values() if s == state) for state in STATES}
        left = counts.pop("stopped") + counts.pop("new")
        parts = [f"{counts['done']} done", f"{counts['running']} running"]
        parts += [f"{counts['failed']} failed"] if counts["failed"] else []
        parts.append(f"{left} left")
        eta = "" if self.eta_seconds is None or not left + counts["running"] else \
            f"; about {format_duration(self.eta_seconds / max(slots, 1))} left"
        return ", ".join(parts) + eta


def sweep_status(sweep_dir: Path, plan: SweepPlan, active: frozenset[str] = frozenset()) -> SweepStatus:
    """Each run's state and the time left: the mean measured epoch time times the epochs not yet trained.
    ``active``: the runs an engine knows to be running, whose workers may not have said so yet."""
    states = {point.name: "running" if point.name in active else recorded_state(sweep_dir, point.name)["state"]
              for point in plan.points}
    seconds, epochs_left = [], 0
    for point in plan.points:
        logged = epochs_logged(run_dir_of(sweep_dir, point.name))
        seconds += logged
        if states[point.name] != "done":
            epochs_left += max(point.recipe().train.epochs - len(logged), 0)
    eta = float(np.mean(seconds)) * epochs_left if seconds else None
    return SweepStatus(states, eta)


def status_report(sweep_dir: Path) -> str:
    """``fastlt sweep --status``: the summary line, then one line per run."""
    plan = read_plan(sweep_dir)
    status = sweep_status(sweep_dir, plan)
    lines = [f"{sweep_dir}: {status.line()}"]
    for point in plan.points:
        record = recorded_state(sweep_dir, point.name)
        logged = len(epochs_logged(run_dir_of(sweep_dir, point.name)))
        where = f" on {record['device']} ({record['host']})" if record["state"] == "running" and "device" in record else ""
        why = f": {record['error']}" if record["state"] == "failed" and record.get("error") else ""
        lines.append(f"  {point.name}: {record['state']}{where}, {logged} epochs logged{why}")
    return "\n".join(lines)

