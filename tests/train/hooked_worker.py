"""`python -m fastlt` for torchrun with a hook after a training step, for tests/train/test_distributed_runs.py.

    torchrun ... hooked_worker.py crash:N pretrain ARGS...    rank 1 SIGKILLs itself after its N-th step, in the
                                                              first attempt only (TORCHELASTIC_RESTART_COUNT 0):
                                                              a lost worker, which torchrun --max-restarts answers
                                                              by starting every worker again
    torchrun ... hooked_worker.py mark:N:FILE pretrain ARGS... rank 0 creates FILE after its N-th step: the test
                                                              knows training runs, on a machine of any speed
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Callable

from fastlt.cli import main
from fastlt.progress import Progress


def after_step(steps: int, action: Callable[[], None]) -> None:
    real_step, taken = Progress.step, []

    def step(progress: Progress) -> None:
        real_step(progress)
        taken.append(1)
        if len(taken) == steps:
            action()

    Progress.step = step


if __name__ == "__main__":
    kind, steps, *where = sys.argv[1].split(":")
    rank, attempt = os.environ.get("RANK"), os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if kind == "crash" and rank == "1" and attempt == "0":
        after_step(int(steps), lambda: os.kill(os.getpid(), signal.SIGKILL))
    elif kind == "mark" and rank == "0":
        after_step(int(steps), lambda: Path(where[0]).touch())
    sys.argv = ["fastlt", *sys.argv[2:]]
    main()
