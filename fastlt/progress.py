"""What a run tells the person watching it, on stderr: a live bar on a terminal, plain lines in a log file.

stdout is kept for the run folder (the last line of ``fastlt pretrain``), so scripts can read it.
Besides the loss and speed, every line carries the expected time to the end of the run (the
last epoch this command trains), not only to the end of the epoch, and the held-out kNN
numbers on the epochs the monitor measures them. ``Stages`` does the same for the stages of an
evaluation (feature extraction, each probe's epochs), under the same switch (``train.progress``).
It sits at the package root, below train and evaluate, since both report through it.
"""
from __future__ import annotations

import statistics
import sys
import time
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from tqdm import tqdm

RECENT_EPOCHS = 10  # epoch times the run ETA is estimated from


def say(message: str) -> None:
    """One line for the user on stderr."""
    print(message, file=sys.stderr, flush=True)


def live_bar(enabled: bool) -> bool:
    """Whether progress is a live tqdm bar (on a terminal) rather than plain lines (a log file or pipe)."""
    return enabled and sys.stderr.isatty()


def format_duration(seconds: float) -> str:
    """A short human duration: 45s, 12m 05s, 3h 07m, 2d 04h."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def run_eta(epoch_seconds: Sequence[float], epochs_left: int, monitor_seconds: float | None = None,
            monitors_left: int = 0, current_epoch_left: float = 0.0) -> float | None:
    """Seconds to the end of the run: ``epochs_left`` whole epochs at the median of the recent epoch times
    (a compile or a slow first epoch does not skew it), plus ``monitors_left`` monitor calls at the last one's
    time (nothing for them before one was measured), plus ``current_epoch_left`` seconds of the running epoch.

    None while no epoch time is known and whole epochs are left.
    """
    if epochs_left > 0 and not epoch_seconds:
        return None
    per_epoch = statistics.median(epoch_seconds) if epoch_seconds else 0.0
    return current_epoch_left + epochs_left * per_epoch + monitors_left * (monitor_seconds or 0.0)


class Progress:
    """Steps of the current epoch and the loss and speed whenever the trainer reads them, and the run's ETA.

    On a terminal: a tqdm bar per epoch. Otherwise (stderr to a file or pipe): a plain line at
    each read and none of tqdm's carriage returns. Either way, one summary line per epoch.
    ``last_epoch`` is the epoch this command stops after (``train.epochs`` or ``--until-epoch``);
    ``monitor_epochs`` the epochs after which the monitor runs, whose time the ETA includes.
    """

    def __init__(self, enabled: bool, total_epochs: int, last_epoch: int | None = None,
                 monitor_epochs: Collection[int] = (), monitor_label: str = "kNN"):
        self.enabled = enabled
        self.total_epochs = total_epochs
        self.last_epoch = last_epoch or total_epochs
        self.monitor_epochs = frozenset(monitor_epochs)
        self.monitor_label = monitor_label
        self.live = live_bar(enabled)
        self._bar: tqdm | None = None
        self._epoch = 0
        self._steps = 0
        self._started = 0.0
        self._epoch_seconds: deque[float] = deque(maxlen=RECENT_EPOCHS)  # wall time per epoch, monitor excluded
        self._monitor_seconds: float | None = None

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._epoch, self._steps = epoch, steps
        self._started = time.perf_counter()
        if self.live:
            self._bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.total_epochs}", unit="step",
                             leave=False, dynamic_ncols=True, file=sys.stderr)

    def step(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def _monitors_after(self, epoch: int, inclusive: bool) -> int:
        return sum(1 for e in self.monitor_epochs if (e >= epoch if inclusive else e > epoch) and e <= self.last_epoch)

    def eta(self, step: int | None = None) -> float | None:
        """Seconds to the end of the run; ``step`` (1-based) while an epoch runs, None at its end."""
        epochs_left = self.last_epoch - self._epoch
        if step is None:
            return run_eta(self._epoch_seconds, epochs_left, self._monitor_seconds,
                           self._monitors_after(self._epoch, inclusive=False))
        elapsed = time.perf_counter() - self._started
        current_left = elapsed / max(step, 1) * max(self._steps - step, 0)  # this epoch, at its own pace
        epoch_times = self._epoch_seconds or [elapsed / max(step, 1) * max(self._steps, 1)]
        return run_eta(epoch_times, epochs_left, self._monitor_seconds, self._monitors_after(self._epoch, True),
                       current_left)

    def eta_text(self, step: int | None = None) -> str:
        seconds = self.eta(step)
        return "ETA ?" if seconds is None else f"ETA {format_duration(seconds)} to epoch {self.last_epoch}"

    def reading(self, step: int, loss: float, images_per_second: float) -> None:
        """The loss and speed read at ``step`` (1-based, within the epoch)."""
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.0f}",
                                  run_eta=self.eta_text(step).removeprefix("ETA "))
        elif self.enabled:
            say(f"epoch {self._epoch}/{self.total_epochs} step {step}/{self._steps}: "
                f"loss {loss:.4f}, {images_per_second:.0f} img/s, {self.eta_text(step)}")

    def monitor_text(self, record: dict[str, Any]) -> str:
        """``kNN@1 45.20 (many 60.10, medium 40.20, few 20.30)`` from a record's monitor keys."""
        def number(key: str) -> str:
            value = record.get(key)
            return "-" if value is None else f"{value:.2f}"

        groups = ", ".join(f"{name} {number(f'monitor_knn_{name}')}" for name in ("many", "medium", "few"))
        return f"held-out {self.monitor_label} {number('monitor_knn')} ({groups})"

    def end_epoch(self, record: dict[str, Any]) -> None:
        """The epoch's summary line; the time since ``start_epoch`` (less the monitor's) feeds the ETA, so the time
        the trainer spends handing the epoch's checkpoint to its writer, before this call, counts."""
        monitor_seconds = record.get("monitor_seconds")
        if monitor_seconds is not None:
            self._monitor_seconds = float(monitor_seconds)
        self._epoch_seconds.append(max(time.perf_counter() - self._started - (monitor_seconds or 0.0), 0.0))
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled:
            monitor = f", {self.monitor_text(record)}" if "monitor_knn" in record else ""
            say(f"epoch {record['epoch']}/{self.total_epochs}: loss {record['loss']:.4f}, "
                f"{record['images_per_second']:.0f} img/s, lr {record['lr']:.4g}, {record['epoch_seconds']:.1f} s"
                f"{monitor}; {self.eta_text()}")


class Advance(Protocol):
    """Called after each ``count`` units (epochs, images) of a stage."""

    def __call__(self, count: int = 1) -> None: ...


def unwatched(count: int = 1) -> None:
    """The ``Advance`` of a caller that shows no progress."""


class Stages:
    """Progress of a command made of stages, such as linear-eval's features and probes, the way ``Progress``
    shows pretraining: on a terminal a tqdm bar per stage; in a log a plain line at each tenth of a stage with
    its ETA. Either way one line when a stage ends, with its time. ``enabled`` is the run's ``train.progress``."""

    def __init__(self, enabled: bool, command: str):
        self.enabled = enabled
        self.command = command
        self.live = live_bar(enabled)

    @contextmanager
    def stage(self, what: str, total: int, unit: str = "epoch") -> Iterator[Advance]:
        """``with stages.stage("bcl: linear probe on all-train", 500) as advance:``, then ``advance()`` after each
        epoch (``advance(n)`` after n units)."""
        started, done = time.perf_counter(), 0
        bar = tqdm(total=total, desc=f"{self.command}: {what}", unit=unit, leave=False, dynamic_ncols=True,
                   file=sys.stderr) if self.live else None

        def advance(count: int = 1) -> None:
            nonlocal done
            tenth = max(1, total // 10)
            crossed = (done + count) // tenth > done // tenth
            done += count
            if bar is not None:
                bar.update(count)
            elif self.enabled and crossed and done < total:
                left = (time.perf_counter() - started) / done * (total - done)
                say(f"{self.command}: {what}: {done:,}/{total:,} {unit}s, ETA {format_duration(left)}")

        try:
            yield advance
        finally:
            if bar is not None:
                bar.close()
        if self.enabled:
            say(f"{self.command}: {what}: {done:,}/{total:,} {unit}s in "
                f"{format_duration(time.perf_counter() - started)}")
