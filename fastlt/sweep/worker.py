"""A worker process of a sweep: ``python -m fastlt.sweep.worker SWEEP_DIR NAME DEVICE [--train-only]`` brings the
run NAME of the sweep folder to done (fastlt.sweep.point), and exits as a fastlt command does: 0, 1 with an
``error:`` line, or 128 + the signal that stopped it. Its own module, which the package does not import, so
that ``-m`` runs it once.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

from fastlt.errors import FastltError, Interrupted, RunStopped
from fastlt.sweep.point import run_point, train_point
from fastlt.sweep.state import read_plan


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def main(argv: list[str]) -> int:
    """The worker's whole job; argv as in the module's docstring. SIGINT and SIGTERM end it as stopped wherever
    they come (the trainer turns them into a stop at a step while it trains)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    sweep_dir, name, device = Path(argv[0]), argv[1], argv[2]
    try:
        point = read_plan(sweep_dir).point(name)
        if "--train-only" in argv:  # a rank of torchrun inside a Slurm job: the job evaluates afterwards
            train_point(sweep_dir, point, device)
        else:
            run_point(sweep_dir, point, device)
    except FastltError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (RunStopped, KeyboardInterrupt) as stop:  # the trainer has said where it stopped
        return 128 + getattr(stop, "signum", signal.SIGINT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
