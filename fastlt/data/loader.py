"""The native loader: a whole split resident on the device as uint8, batched by an on-device permutation.

CIFAR-sized data sets fit on any GPU as uint8 (50,000 x 32x32x3 = 150 MB), so the images
are copied to the device once and every epoch is one ``randperm`` plus gathers: no worker
processes, no per-epoch host-to-device traffic, no host synchronisation per step.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from fastlt.data.store import StorePart
from fastlt.errors import FastltError


class Batch(NamedTuple):
    """One training batch (this process's share of it, when several share the run), already on the device."""

    images: Tensor  # uint8 [B, 3, H, W], channels_last memory (a permuted NHWC tensor)
    labels: Tensor  # int64 [B]
    indices: Tensor  # int64 [B], index into the store part (not into the split)
    shard_sizes: tuple[int, ...] | None = None  # every rank's share of the global batch; None in one process


class Loader(Protocol):
    """What the trainer iterates, whatever the store's backend: ``len`` batches an epoch of ``num_samples``."""

    @property
    def num_samples(self) -> int: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...


def batch_bounds(count: int, size: int, drop_last: bool, world: int = 1) -> list[tuple[int, int]]:
    """(start, end) of each batch of an epoch over ``count`` samples in batches of ``size``.

    With drop_last the partial last batch is skipped; without it, it is kept, and a last
    batch too small to give each of the ``world`` processes two samples (batch norm cannot
    train on one) joins the batch before it: in one process, a last batch of one sample.
    """
    ends = list(range(size, count + 1, size))
    if not drop_last and count % size:
        if count % size < 2 * world and ends:
            ends[-1] = count
        else:
            ends.append(count)
    return list(zip([0, *ends[:-1]], ends))


def shard_bounds(count: int, world: int) -> list[tuple[int, int]]:
    """(start, end) of each rank's share of a batch of ``count`` rows: contiguous, in rank order, sizes
    differing by at most one (the first ``count % world`` ranks take one more)."""
    base, extra = divmod(count, world)
    ends = [base * (r + 1) + min(r + 1, extra) for r in range(world)]
    return list(zip([0, *ends[:-1]], ends))


def shard_of(rows: Tensor | np.ndarray, shard: tuple[int, int]) -> tuple[Tensor | np.ndarray, tuple[int, ...] | None]:
    """This rank's share of a global batch's rows, and every rank's share size (None in one process)."""
    rank, world = shard
    if world == 1:
        return rows, None
    bounds = shard_bounds(len(rows), world)
    start, end = bounds[rank]
    return rows[start:end], tuple(b - a for a, b in bounds)


def resident_copy(images: np.ndarray, rows: np.ndarray, device: torch.device, chunk: int = 4096) -> Tensor:
    """``images[rows]`` on the device, copied a chunk of rows at a time, so the host never holds the whole
    split at once (8 processes each copying ImageNet-100 would not fit a node's memory)."""
    out = torch.empty((len(rows), *images.shape[1:]), dtype=torch.uint8, device=device)
    for start in range(0, len(rows), chunk):
        out[start:start + chunk] = torch.from_numpy(np.ascontiguousarray(images[rows[start:start + chunk]]))
    return out


def check_batching(count: int, batch_size: int, drop_last: bool) -> None:
    """Refuse a split no epoch can be made of, whatever the backend."""
    if batch_size < 1:
        raise FastltError(f"batch size {batch_size}: must be at least 1")
    if count == 0:
        raise FastltError("loader: the split selects no samples")
    if drop_last and batch_size > count:
        raise FastltError(f"batch size {batch_size}: larger than the {count} samples of the split, "
                          "so drop_last leaves no batch")


def epoch_order(count: int, generator: torch.Generator, shuffle: bool) -> torch.Tensor:
    """The epoch's order of the split's positions, on the generator's device: one ``randperm`` from the run's
    generator, or 0..count-1. Every backend's loader takes it, so all of them visit the same batches."""
    if shuffle:
        return torch.randperm(count, generator=generator, device=generator.device)
    return torch.arange(count, device=generator.device)


class NativeLoader:
    """Yields Batch(images, labels, indices) from a store part restricted to ``indices`` (all when None).

    The images, labels and store indices are put on ``device`` once, here; each epoch draws one
    permutation from ``generator`` (which must live on the same device) when ``shuffle``.
    With drop_last the partial last batch is skipped; without it (the reference loaders'
    choice) every sample is seen each epoch and a step sees at most two batch shapes, the
    full one and the last. A last batch of one sample, which batch norm cannot train on,
    joins the batch before it (B + 1): samples are never repeated to pad a batch.
    """

    def __init__(
        self,
        part: StorePart,
        indices: np.ndarray | None,
        batch_size: int,
        device: torch.device | str,
        generator: torch.Generator,
        shuffle: bool = True,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        device = torch.device(device)
        rows = np.arange(len(part.labels), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        check_batching(len(rows), batch_size, drop_last)
        if generator.device.type != device.type:
            raise FastltError(f"loader: generator is on {generator.device}, data on {device}; they must match")
        self._images = resident_copy(part.images, rows, device)  # [N, H, W, 3] contiguous
        self._labels = torch.from_numpy(np.asarray(part.labels[rows], dtype=np.int64)).to(device)
        self._indices = torch.from_numpy(rows).to(device)
        self._batch_size = batch_size
        self._generator = generator
        self._shuffle = shuffle
        self._drop_last = drop_last
        self._shard = shard

    @property
    def num_samples(self) -> int:
        """Samples in the split (an epoch sees all of them, or all but the last partial batch)."""
        return int(self._indices.shape[0])

    def __len__(self) -> int:
        return len(batch_bounds(self.num_samples, self._batch_size, self._drop_last, self._shard[1]))

    def __iter__(self) -> Iterator[Batch]:
        order = epoch_order(self.num_samples, self._generator, self._shuffle)
        for start, end in batch_bounds(self.num_samples, self._batch_size, self._drop_last, self._shard[1]):
            chosen, sizes = shard_of(order[start:end], self._shard)
            # Gather rows of the NHWC tensor, then view as NCHW: channels_last memory at no cost.
            images = self._images[chosen].permute(0, 3, 1, 2)
            yield Batch(images=images, labels=self._labels[chosen], indices=self._indices[chosen], shard_sizes=sizes)
