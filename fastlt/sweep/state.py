"""Where each run of a sweep stands, read from the sweep folder alone, so ``fastlt sweep --status`` works from
any shell on any machine that sees the folder.

SWEEP_DIR/plan.json holds the points; SWEEP_DIR/state/NAME.json the last thing the run's worker said
(running on which device and host, failed and why, done); SWEEP_DIR/runs/NAME is the run folder. A run
whose worker was killed keeps "running" in its file; ``status`` tells it from a live one by its host and
process id where it can (the same host) and calls it stopped.
"""
from __future__ import annotations

import dataclasses
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
from fastlt.train.resume import CHANGEABLE_ON_RESUME, flatten

PLAN_FILE = "plan.json"
STATE_FOLDER = "state"
RUNS_FOLDER = "runs"
LOGS_FOLDER = "logs"
STATES = ("done", "running", "failed", "stopped", "new")  # the order a status line counts them in


def run_dir_of(sweep_dir: Path, name: str) -> Path:
    return Path(sweep_dir) / RUNS_FOLDER / name


def write_plan(sweep_dir: Path, plan: SweepPlan, slots: int = 1) -> None:
    """The points as JSON, for the workers and for ``--status`` (which need not read the sweep file again), with
    each point's whole recipe (what a later invocation compares with) and the runs at once (for the time left)."""
    points = [{**asdict(point), "recipe_path": str(point.recipe_path), "recipe": point.recipe().to_dict(),
               "overrides": [[o.assignment, o.typed] for o in point.overrides]} for point in plan.points]
    write_json_atomic(Path(sweep_dir) / PLAN_FILE, {"source": str(plan.source), "slots": slots, "points": points})


def _plan_document(sweep_dir: Path) -> dict[str, Any]:
    path = Path(sweep_dir) / PLAN_FILE
    if Path(sweep_dir).is_file():
        raise FastltError(f"{sweep_dir}: a file; --status reads the sweep folder (by default sweeps/<file name>)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FastltError(f"{sweep_dir}: not a sweep folder (no {PLAN_FILE}; start one with `fastlt sweep FILE`)") \
            from None
    except (OSError, ValueError) as error:
        raise FastltError(f"{path}: unreadable ({error})") from None


def check_plan_change(sweep_dir: Path, plan: SweepPlan, apply: bool) -> list[str]:
    """Compare ``plan`` with the one this folder's runs were made with: a run whose recipe changed (the sweep file
    or the recipe file edited) is refused in one line, since its results would no longer be what the file says;
    a finished run given more epochs (and nothing else) is set to resume where ``apply``. Returns those runs."""
    if not (Path(sweep_dir) / PLAN_FILE).is_file():
        return []
    recorded = {p["name"]: p.get("recipe", {}) for p in _plan_document(sweep_dir)["points"]}
    extended = []
    for point in plan.points:
        run_dir = run_dir_of(sweep_dir, point.name)
        if point.name not in recorded or not run_dir.exists():
            continue
        old, new = flatten(recorded[point.name]), flatten(point.recipe().to_dict())
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in CHANGEABLE_ON_RESUME]
        if changed == ["train.epochs"] and new["train.epochs"] > old["train.epochs"]:
            if apply and recorded_state(sweep_dir, point.name)["state"] == "done":
                mark(sweep_dir, point.name, "stopped", extended_to=new["train.epochs"])
            extended.append(point.name)
        elif changed:
            key = changed[0]
            raise FastltError(f"{sweep_dir}: run {point.name} was made with {key} = {old.get(key)!r} and the sweep "
                              f"now says {new.get(key)!r}; give the sweep another --out, or remove {run_dir} to run it "
                              "anew")
    return extended


def read_plan(sweep_dir: Path) -> SweepPlan:
    """The plan a sweep folder was started with; a one-line error for a folder that is not one."""
    document = _plan_document(sweep_dir)
    fields = {f.name for f in dataclasses.fields(SweepPoint)}
    points = tuple(SweepPoint(**{**{k: v for k, v in p.items() if k in fields}, "recipe_path": Path(p["recipe_path"]),
                                 "shots": tuple(p["shots"]), "overrides": tuple(Override(*o) for o in p["overrides"])})
                   for p in document["points"])
    return SweepPlan(Path(document["source"]), points)


def planned_slots(sweep_dir: Path) -> int:
    """How many runs the sweep in this folder runs at once (1 for Slurm: the queue decides)."""
    return int(_plan_document(sweep_dir).get("slots", 1))


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
    if record["state"] == "done" and not run_dir_of(sweep_dir, name).exists():  # its run folder removed: anew
        record = {"state": "new"}
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
    """Each run's state and the time left: the mean measured epoch time times the epochs not yet trained, plus
    for each run not done the mean time a finished run spent outside its epochs (starting, evaluating).
    ``active``: the runs an engine knows to be running, whose workers may not have said so yet."""
    records = {point.name: recorded_state(sweep_dir, point.name) for point in plan.points}
    states = {name: "running" if name in active else record["state"] for name, record in records.items()}
    seconds, epochs_left, outside = [], 0, []
    for point in plan.points:
        logged = epochs_logged(run_dir_of(sweep_dir, point.name))
        seconds += logged
        record = records[point.name]
        if states[point.name] != "done":
            epochs_left += max(point.recipe().train.epochs - len(logged), 0)
        elif "started" in record:  # its last invocation's wall time less the epochs it trained then
            outside.append(max(record["time"] - record["started"] - sum(logged[record.get("from_epoch", 0):]), 0.0))
    if not seconds:
        return SweepStatus(states, None)
    runs_left = sum(1 for state in states.values() if state != "done")
    eta = float(np.mean(seconds)) * epochs_left + (float(np.mean(outside)) * runs_left if outside else 0.0)
    return SweepStatus(states, eta)


def status_report(sweep_dir: Path) -> str:
    """``fastlt sweep --status``: the summary line, then one line per run."""
    plan = read_plan(sweep_dir)
    status = sweep_status(sweep_dir, plan)
    lines = [f"{sweep_dir}: {status.line(planned_slots(sweep_dir))}"]
    for point in plan.points:
        record = recorded_state(sweep_dir, point.name)
        logged = len(epochs_logged(run_dir_of(sweep_dir, point.name)))
        running = record["state"] == "running" and "device" in record
        where = f" on {record['device']} ({record['host']})" if running else ""
        why = f": {record['error']}" if record["state"] == "failed" and record.get("error") else ""
        lines.append(f"  {point.name}: {record['state']}{where}, {logged} epochs logged{why}")
    return "\n".join(lines)

