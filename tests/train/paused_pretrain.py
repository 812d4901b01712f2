"""`python -m fastlt` that freezes at chosen points of the run, so tests/train/test_faults.py can signal or SIGKILL a
real process at exactly those points on a machine of any speed (a timer could fire after a fast run had finished).

    python paused_pretrain.py POINT:N[,POINT:N...] MARKER pretrain ARGS...

POINT:N is ``step:N`` (after this process's N-th training step), ``metrics:N`` (right after its N-th epoch
line reached metrics.jsonl, before that epoch's checkpoint) or ``write:N`` (inside its N-th checkpoint write:
the bytes are in the hidden temporary file, which is neither synced nor renamed yet; the write runs in the
checkpoint writer's thread, so training goes on until the next checkpoint waits for it). At each point the
process appends a line to MARKER and waits for a signal (SIGKILL ends it there; after a handled one, the run goes
on); everything else runs as in `fastlt pretrain`.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Callable

import torch

import fastlt.train.trainer as trainer
from fastlt.cli import main
from fastlt.progress import Progress


def pausing(real: Callable[..., Any], at: int, marker: Path, only: Callable[..., bool] = lambda *args: True):
    """``real``, which pauses the process (after running) on its ``at``-th call that ``only`` accepts."""
    calls = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if only(*args):
            calls.append(1)
            if len(calls) == at:
                wait_for_a_signal(marker, f"paused after call {at} of {real.__qualname__}")
        return result

    return wrapper


def wait_for_a_signal(marker: Path, line: str) -> None:
    """Append ``line`` to ``marker``, then wait for SIGINT or SIGTERM and hand it to the handler fastlt installed
    (or be ended by SIGKILL). The two are blocked from before the marker is written: one sent as soon as the
    test reads the marker cannot slip in before the wait."""
    stops = {signal.SIGINT, signal.SIGTERM}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    with marker.open("a") as lines:
        lines.write(line + "\n")
    signum = signal.sigwait(stops)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    signal.raise_signal(signum)


def install(points: str, marker: Path) -> None:
    for point in points.split(","):
        install_one(point, marker)


def install_one(point: str, marker: Path) -> None:
    kind, at = point.split(":")
    if kind == "step":
        Progress.step = pausing(Progress.step, int(at), marker)
    elif kind == "metrics":
        trainer.append_metrics = pausing(trainer.append_metrics, int(at), marker)
    elif kind == "write":  # torch.save into a checkpoint's temporary file (nothing else in a run saves to one)
        torch.save = pausing(torch.save, int(at), marker, lambda payload, handle: str(handle.name).endswith(".part"))
    else:
        raise SystemExit(f"unknown pause point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1], Path(sys.argv[2]))
    sys.argv = ["fastlt", *sys.argv[3:]]
    main()
