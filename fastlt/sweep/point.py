"""One run of a sweep from start to report: pretrain it (or resume it where it stopped), then evaluate it with
its recipe's protocol. The same function serves every engine: a worker process of ``--devices`` / ``--jobs``
(fastlt/sweep/worker.py), a Slurm job, submitit's local executor.

A run that is done is left alone; one stopped mid-way resumes from its checkpoint (the trainer's auto-resume,
``pretrain_or_resume``); evaluation replaces the run's own reports, so one cut short is written again whole.
"""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from fastlt.errors import FastltError, RunStopped
from fastlt.evaluate.protocol import linear_eval
from fastlt.hardware import resolve_device, resolve_precision
from fastlt.recipe import Override
from fastlt.sweep.plan import SweepPoint
from fastlt.sweep.state import RUNS_FOLDER, epochs_logged, mark, recorded_state, run_dir_of
from fastlt.train.trainer import pretrain_or_resume


def placement(sweep_dir: Path, point: SweepPoint, device: str) -> list[Override]:
    """Where the run lives and trains: the sweep's runs folder, the point's name, the device it was given; and
    its W&B group, the sweep's name, unless the sweep file names one."""
    typed = f"fastlt sweep {sweep_dir}"
    where = [Override(f"train.out_dir={json.dumps(str(Path(sweep_dir).resolve() / RUNS_FOLDER))}", typed),
             Override(f"train.name={json.dumps(point.name)}", typed),
             Override(f"train.device={json.dumps(device)}", typed)]
    if not point.recipe().train.wandb_group:
        where.append(Override(f"train.wandb_group={json.dumps(Path(sweep_dir).resolve().name)}", typed))
    return where


def train_point(sweep_dir: Path, point: SweepPoint, device: str) -> Path:
    """Pretrain the point's run to its last epoch, starting or resuming it; every rank of a torchrun calls this."""
    where = placement(sweep_dir, point, device)
    return pretrain_or_resume(point.recipe(*where), str(point.recipe_path), where)


def evaluate_point(run_dir: Path, point: SweepPoint, device: str) -> None:
    """The recipe's protocol(s) on the run's last checkpoint, at the point's shots."""
    resolved = resolve_device(device)
    linear_eval(run_dir, device=resolved, precision=resolve_precision("auto", resolved, "sweep").name,
                shots=point.shots, random_init=point.random_init, overwrite=True)


def run_point(sweep_dir: Path, point: SweepPoint, device: str, train: bool = True) -> str:
    """Bring one run to done, recording each state in the sweep folder; returns the final state.

    ``train=False``: the pretraining ran elsewhere (torchrun inside a Slurm job) and only the evaluation is left.
    A run already done is not touched. A failure is recorded with its one-line reason and raised again.
    """
    if recorded_state(sweep_dir, point.name)["state"] == "done":
        return "done"
    logged = len(epochs_logged(run_dir_of(sweep_dir, point.name)))
    run = {"device": device, "started": time.time(), "from_epoch": logged}  # for the sweep's time left
    mark(sweep_dir, point.name, "running", **run)
    try:
        run_dir = train_point(sweep_dir, point, device) if train else run_dir_of(sweep_dir, point.name)
        evaluate_point(run_dir, point, device)
    except (RunStopped, KeyboardInterrupt):  # a stop request, however it came: to be continued
        mark(sweep_dir, point.name, "stopped", **run)
        raise
    except BaseException as error:
        mark(sweep_dir, point.name, "failed", **run,
             error=str(error).splitlines()[0] if isinstance(error, FastltError) and str(error)
             else traceback.format_exception_only(error)[-1].strip())
        raise
    mark(sweep_dir, point.name, "done", **run)
    return "done"

