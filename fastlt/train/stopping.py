"""Stopping a run on SIGINT or SIGTERM without losing it: the current step finishes, a checkpoint
that records where in the epoch the run stopped is written, and the process exits.

The handlers only set a flag, which the training loop reads after every step, so a step,
a BCL memory update or a checkpoint write is never cut in half. A second signal while
stopping raises SecondSignal (a KeyboardInterrupt) at once (checkpoint writes are atomic, so
even that leaves the last complete checkpoint in place).
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

from fastlt.errors import SecondSignal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Within ``with StopRequest() as stop:``, SIGINT and SIGTERM set ``stop.signal`` instead of killing
    the process (handlers only exist in the main thread; elsewhere the flag never rises)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            raise SecondSignal(signal.Signals(signum).name, signum)
        self.signal = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
