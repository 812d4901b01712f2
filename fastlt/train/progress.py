"""What a run tells the person watching it, on stderr: a live bar on a terminal, plain lines in a log file.

stdout is kept for the run folder (the last line of ``fastlt pretrain``), so scripts can read it.
"""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def say(message: str) -> None:
    """One line for the user on stderr."""
    print(message, file=sys.stderr, flush=True)


class Progress:
    """Steps of the current epoch and the loss and speed whenever the trainer reads them.

    On a terminal: a tqdm bar per epoch. Otherwise (stderr to a file or pipe): a plain line at
    each read and none of tqdm's carriage returns. Either way, one summary line per epoch.
    """

    def __init__(self, enabled: bool, total_epochs: int):
        self.enabled = enabled
        self.total_epochs = total_epochs
        self.live = enabled and sys.stderr.isatty()
        self._bar: tqdm | None = None
        self._epoch = 0
        self._steps = 0

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._epoch, self._steps = epoch, steps
        if self.live:
            self._bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.total_epochs}", unit="step",
                             leave=False, dynamic_ncols=True, file=sys.stderr)

    def step(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def reading(self, step: int, loss: float, images_per_second: float) -> None:
        """The loss and speed read at ``step`` (1-based, within the epoch)."""
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.0f}")
        elif self.enabled:
            say(f"epoch {self._epoch}/{self.total_epochs} step {step}/{self._steps}: "
                f"loss {loss:.4f}, {images_per_second:.0f} img/s")

    def end_epoch(self, record: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled:
            say(f"epoch {record['epoch']}/{self.total_epochs}: loss {record['loss']:.4f}, "
                f"{record['images_per_second']:.0f} img/s, lr {record['lr']:.4g}, {record['epoch_seconds']:.1f} s")
