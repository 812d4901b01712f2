"""Stopping a run on SIGINT or SIGTERM without losing it: the current step finishes, a checkpoint
that records where in the epoch the run stopped is written, and the process exits.

The handlers only set a flag, which the training loop reads after every step, so a step,
a BCL memory update or a checkpoint write is never cut in half. A second signal while
stopping raises SecondSignal (a KeyboardInterrupt) at once (checkpoint writes are atomic, so
even that leaves the last complete checkpoint in place), unless it repeats the first within
``REPEAT_SECONDS``: launchers deliver one request more than once (torchrun forwards its SIGTERM
to workers that Slurm or the terminal signalled too), and that must not cost the checkpoint.
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import FrameType

from fastlt.errors import RunStopped, SecondSignal
from fastlt.train.run_state import RunState

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_SECONDS = 5.0  # the same signal again within this time is the same request


class StopRequest:
    """Within ``with StopRequest() as stop:``, SIGINT and SIGTERM set ``stop.signal`` instead of killing
    the process (handlers only exist in the main thread; elsewhere the flag never rises)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._at = 0.0  # when the signal came (time.monotonic)
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            if signum == self.signal and time.monotonic() - self._at < REPEAT_SECONDS:
                return
            raise SecondSignal(signal.Signals(signum).name, signum)
        self.signal, self._at = signum, time.monotonic()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def stop_now(stop: StopRequest, state: RunState) -> bool:
    """Whether to stop after this step: at once in one process; with several, every rank stops at the same
    step, at most one step after a signal reached any of them (a launcher's kill grace is far longer)."""
    return state.vote.poll(stop.requested) if state.ranks.active else stop.requested


def stopped(run_dir: Path, signum: int, where: str) -> RunStopped:
    """The exception that ends a run a signal stopped, once its checkpoint is written."""
    name = signal.Signals(signum).name
    return RunStopped(f"{name}: stopped at {where}; checkpoint saved",
                      f"continue with `fastlt pretrain --resume {run_dir}`", signum)
