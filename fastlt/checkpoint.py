"""Checkpoints: atomic writes, a format tag, and loading that can never run code from the file.

A checkpoint holds tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(weights_only=True)``: a file from elsewhere cannot execute anything. A file
that needs more (arbitrary pickled objects, or the pickled numpy RNG state of version 1)
is refused with one line, without unpickling its objects.

A run keeps ``checkpoints/last.pt`` and the one before it, ``previous.pt`` (the old last is
renamed only once the new one is complete), plus a milestone ``epoch<N>.pt`` every
``train.keep_every`` epochs. A last.pt that is missing or unreadable (a disk that failed
under it) falls back to previous.pt, with a warning.

A run hands its checkpoints to a ``CheckpointWriter``: the training loop waits only for a copy of the tensors
in host memory, while a background thread serialises, syncs and renames (on a fast GPU, whose epochs take a
second or less, a synchronous write of a ResNet-18 checkpoint cost a large share of each epoch).
``CheckpointSchedule`` says which epoch ends write one.
"""
from __future__ import annotations

import os
import pickle
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Callable

import torch
from torch import nn

from fastlt.errors import FastltError
from fastlt.files import remove_temporaries, replace_atomically

FORMAT = "fastlt-checkpoint"
VERSION = 2  # 1 pickled numpy state and needed weights_only=False
_NUMPY_GLOBALS = ("numpy.", "_codecs.encode")  # what a version-1 checkpoint's numpy RNG state pickles


CHECKPOINTS = "checkpoints"  # the folder in a run
LAST, PREVIOUS = "last.pt", "previous.pt"


def save_checkpoint(path: Path, payload: dict[str, Any], keep_old_as: Path | None = None) -> None:
    """Write payload (plus the format tag) atomically: a crash mid-write keeps the previous checkpoint
    (renamed to ``keep_old_as`` once the new one is complete, when given)."""
    replace_atomically(path, lambda handle: _save({"format": FORMAT, "version": VERSION, **payload}, handle),
                       keep_old_as)


class _KeepsWriteError:
    """The file torch.save writes to, remembering the first OSError of a write (a full disk): torch's zip writer
    swallows it and fails later with a RuntimeError ("unexpected pos ...") that does not say why."""

    def __init__(self, handle: IO[bytes]):
        self.handle, self.name = handle, handle.name
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.handle.flush()


def _save(payload: dict[str, Any], handle: IO[bytes]) -> None:
    """torch.save, whose failed write is raised as the OSError it was."""
    file = _KeepsWriteError(handle)
    try:
        torch.save(payload, file)
    except RuntimeError:
        if file.error is None:
            raise
        raise file.error from None


def save_run_checkpoint(run_dir: Path, payload: dict[str, Any], milestone: bool = False) -> Path:
    """The run's new last.pt, the old one kept as previous.pt; a milestone also stays as epoch<N>.pt."""
    folder = Path(run_dir) / CHECKPOINTS
    last = folder / LAST
    try:
        save_checkpoint(last, payload, keep_old_as=folder / PREVIOUS)
        if milestone:
            kept = folder / f"epoch{payload['epoch']}.pt"
            kept.unlink(missing_ok=True)
            try:
                os.link(last, kept)  # the same bytes, no copy: last.pt is only ever renamed, never rewritten
            except OSError:
                shutil.copyfile(last, kept)
    except OSError as error:
        raise FastltError(f"{last}: cannot write the checkpoint ({error.strerror or error}); the checkpoints "
                          f"written before are intact") from None
    return last


class CheckpointWriter:
    """Writes a run's checkpoints (``save_run_checkpoint``) in a background thread, one at a time.

    ``submit`` copies the payload's tensors to host memory first (training changes the originals in place right
    after), so the loop waits for that copy only, and for a write still in progress (whose buffers the copy
    reuses). A write's error is raised by the next ``submit`` or by ``wait``. Leaving the ``with`` block on an
    exception waits for the write (a run that fails keeps its newest checkpoint; a write error is then a
    warning), except on a KeyboardInterrupt (a second signal while stopping): the process ends at once and the
    write's temporary file is removed, so the last complete checkpoint stays, as when a synchronous write was
    interrupted.
    """

    def __init__(self, warn: Callable[[str], None]):
        self.warn = warn
        self._done = threading.Event()
        self._done.set()
        self._error: BaseException | None = None
        self._folder: Path | None = None
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}  # the snapshots' host memory, by place in the payload

    def submit(self, run_dir: Path, payload: dict[str, Any], milestone: bool = False) -> float:
        """Start writing ``payload`` as the run's last.pt; returns the seconds the caller was held."""
        started = time.perf_counter()
        self.wait()
        snapshot = self._snapshot(payload)
        self._folder = Path(run_dir) / CHECKPOINTS
        self._done.clear()
        threading.Thread(target=self._write, args=(Path(run_dir), snapshot, milestone), name="fastlt-checkpoint",
                         daemon=True).start()
        return time.perf_counter() - started

    def wait(self) -> None:
        """Until the write in progress is on disk; raises its error, if it failed."""
        self._done.wait()  # an Event, not Thread.join: a second signal must interrupt it
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self.wait()
        elif issubclass(kind, KeyboardInterrupt):
            if not self._done.is_set() and self._folder is not None:
                remove_temporaries(self._folder)
        else:
            try:
                self.wait()
            except Exception as failed:  # noqa: BLE001 - the exception already raised is the one to report
                self.warn(f"warning: {failed}")

    def _write(self, run_dir: Path, payload: dict[str, Any], milestone: bool) -> None:
        try:
            save_run_checkpoint(run_dir, payload, milestone)
        except BaseException as error:  # noqa: BLE001 - handed to the training thread, which raises it
            self._error = error
        finally:
            self._done.set()

    def _snapshot(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload with every tensor copied to host memory of its own: buffers kept for the next checkpoint
        (fresh memory would cost a page fault per 4 KiB, as much as the copy), pinned for CUDA tensors, whose
        copies do not block; one synchronize waits for them all."""
        devices: set[torch.device] = set()

        def copy(value: Any, place: tuple[Any, ...]) -> Any:
            if isinstance(value, torch.Tensor):
                return self._host_copy(value.detach(), place, devices)
            if isinstance(value, dict):
                return {key: copy(item, (*place, key)) for key, item in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(copy(item, (*place, index)) for index, item in enumerate(value))
            return value  # numbers, strings, None

        with _one_intra_op_thread():
            snapshot = copy(payload, ())
        for device in devices:
            torch.cuda.synchronize(device)
        return snapshot

    def _host_copy(self, tensor: torch.Tensor, place: tuple[Any, ...], devices: set[torch.device]) -> torch.Tensor:
        cuda = tensor.device.type == "cuda"
        buffer = self._buffers.get(place)
        if buffer is None or (buffer.shape, buffer.stride(), buffer.dtype) != (tensor.shape, tensor.stride(),
                                                                               tensor.dtype):
            buffer = torch.empty_like(tensor, device="cpu")
            buffer = self._buffers[place] = buffer.pin_memory() if cuda else buffer
        buffer.copy_(tensor, non_blocking=cuda)
        if cuda:
            devices.add(tensor.device)
        return buffer


@contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """Host copies on one thread: a second adds little to a memory copy, and each parallel copy waits at its
    barrier for a pool thread whose core another process may hold (a ResNet-18 snapshot on 2 busy cores:
    390 ms with 2 threads, 45 ms with 1). Only in OpenMP builds, whose pool can change size at any time."""
    threads = torch.get_num_threads()
    if threads == 1 or not torch.backends.openmp.is_available():
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class CheckpointSchedule:
    """Which epoch ends write a checkpoint by the recipe's cadence: every ``every`` epochs (epoch numbers divisible
    by it), or the first epoch end once ``minutes`` have passed since the last checkpoint; 0 turns a rule off.
    The trainer adds the last epoch it trains, milestones and stops. ``saved_epoch`` is the newest checkpoint's
    epoch (0: none yet), which a non-finite loss reports."""

    every: int
    minutes: float
    saved_epoch: int
    saved_at: float = field(default_factory=time.monotonic)  # when it was taken (the run's start before one)

    def due(self, epoch: int) -> bool:
        by_count = self.every > 0 and epoch % self.every == 0
        return by_count or (self.minutes > 0 and time.monotonic() - self.saved_at >= 60 * self.minutes)

    def saved(self, epoch: int) -> None:
        self.saved_epoch, self.saved_at = epoch, time.monotonic()


def load_run_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The run's last.pt, or previous.pt (with a warning) when last.pt is missing or unreadable.

    Temporary files a killed write left in the run are removed first.
    """
    folder = Path(run_dir) / CHECKPOINTS
    remove_temporaries(folder)
    remove_temporaries(Path(run_dir))
    try:
        return folder / LAST, load_checkpoint(folder / LAST)
    except FastltError as error:
        previous = folder / PREVIOUS
        if not previous.is_file():
            raise
        payload = load_checkpoint(previous)
        warn(f"warning: {error}; using {previous} (epoch {payload['epoch']}) instead")
        return previous, payload


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a fastlt checkpoint on the CPU with weights_only=True; anything else is a one-line FastltError."""
    path = Path(path)
    if not path.is_file():
        raise FastltError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FastltError(f"{path}: {_why_unsafe(path)}") from None
    except Exception as error:  # torch raises many types for corrupt files
        raise FastltError(f"{path}: not a readable checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FastltError(f"{path}: not a fastlt checkpoint")
    if payload.get("version") != VERSION:
        raise FastltError(f"{path}: checkpoint version {payload.get('version')!r} is not supported (expected {VERSION})")
    return payload


def _why_unsafe(path: Path) -> str:
    """Name what a checkpoint would need to execute, read from its pickle without running it."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not even a readable archive
        needed = []
    if needed and all(name.startswith(_NUMPY_GLOBALS) for name in needed):
        return ("checkpoint predates safe checkpoints (fastlt checkpoint version 1 pickles numpy state); "
                "it cannot be loaded without allowing code execution, so it is refused")
    if not needed:
        return "not a readable checkpoint (damaged, or not a torch.save file)"
    return f"refusing to load: the file would run code when unpickled ({needed[0]}); fastlt checkpoints never need that"


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load a state dict strictly; a different architecture becomes a FastltError that says how."""
    own = module.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches, first {mismatched[0]}")
    if missing:
        problems.append(f"{len(missing)} missing keys, first {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, first {unexpected[0]}")
    if problems:
        raise FastltError(f"{path}: checkpoint is for a different model ({'; '.join(problems)})")
    module.load_state_dict(state)
