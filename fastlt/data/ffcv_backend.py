"""FFCV stores: one ``.beton`` per part (image as JPEG or raw, label, store index), and its loader.

The loader hands FFCV the epoch's order itself: the permutation is drawn from the run's
torch generator exactly as ``NativeLoader`` draws it, so an FFCV run visits the same batches
as a native run of the same seed, resumes exactly (the generator state is checkpointed), and
every index of the split comes once per epoch. FFCV decodes on its threads into uint8 NHWC,
which goes to the device as it is (``_Handover``); fastlt's view pipeline does the rest. (FFCV's
fused decode + random-resized-crop draws from its own generator and would bypass fastlt's views,
so it is not used.)
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fastlt.data.loader import Batch, batch_bounds, epoch_order, shard_of
from fastlt.errors import FastltError

WRITE_MODES = ("jpg", "raw")
READ_BATCH = 512  # rows decoded per FFCV batch when a part is read as an array


@contextlib.contextmanager
def keeping_torch_threads() -> Iterator[None]:
    """FFCV sets torch's intra-op thread count to its own (1 when ``ffcv.pipeline`` is imported, the
    loader's workers at every epoch); training keeps the count it had, so its numbers do not
    depend on whether FFCV was touched."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def require_ffcv() -> None:
    """One line saying how to get FFCV, instead of an ImportError."""
    try:
        with keeping_torch_threads():
            import ffcv  # noqa: F401
            import ffcv.pipeline.compiler  # noqa: F401 - the import that resets torch's threads
    except ImportError as error:
        raise FastltError(f"FFCV is not installed ({error}); install it with `pip install 'fastlt[ffcv]'` "
                          "after `apt-get install -y pkg-config libturbojpeg0-dev libopencv-dev`") from None


class _Rows:
    """The indexed data set FFCV's writer reads: (image HWC uint8, label, store index) per row."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, row: int) -> tuple[np.ndarray, int, int]:
        return np.ascontiguousarray(self.images[row]), int(self.labels[row]), row


def write_beton(path: Path, images: np.ndarray, labels: np.ndarray, write_mode: str, quality: int,
                workers: int) -> None:
    """Write one part as a .beton with fields image, label and index (the row in the part)."""
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if write_mode not in WRITE_MODES:
        raise FastltError(f"--image-format {write_mode!r}: expected one of {WRITE_MODES}")
    fields = {"image": RGBImageField(write_mode=write_mode, jpeg_quality=quality), "label": IntField(),
              "index": IntField()}
    with keeping_torch_threads():
        DatasetWriter(str(path), fields, num_workers=max(1, workers)).from_indexed_dataset(_Rows(images, labels))


def _ffcv_loader(path: Path, batch_size: int, workers: int, rows: np.ndarray | None, drop_last: bool = False):
    """FFCV's Loader over the ``rows`` of ``path`` (all when None), in file order until its traversal
    order is replaced, yielding (images NHWC uint8, labels, indices) on the CPU, in buffers FFCV reuses."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    pipelines = {"image": [SimpleRGBImageDecoder(), ToTensor()],
                 "label": [IntDecoder(), ToTensor()],  # [B, 1]
                 "index": [IntDecoder(), ToTensor()]}
    try:
        with keeping_torch_threads():
            return Loader(str(path), batch_size=batch_size, num_workers=workers, order=OrderOption.SEQUENTIAL,
                          pipelines=pipelines, drop_last=drop_last, indices=rows)
    except (OSError, ValueError, IndexError, KeyError) as error:  # what FFCV's reader raises on a damaged file
        raise FastltError(f"{path}: not a readable FFCV file ({type(error).__name__}: {error}); "
                          "convert the data again (`fastlt convert ... --format ffcv --verify`)") from None


class _Handover:
    """Takes each batch out of FFCV's buffers, which FFCV refills once the batch after it is requested.

    On the CPU a copy of its own. On CUDA FFCV's buffers are pinned and the copy to the device is
    asynchronous: it runs on a side stream, which waits for nothing the training step queued, and
    FFCV is asked for its next batch only once that copy has run (a CUDA event), so however far
    the loop runs ahead of the GPU, no buffer is refilled before it was read. The wait is the
    copy's own time, not the GPU's backlog; the training stream waits for the copy on the device.
    """

    def __init__(self, device: torch.device):
        self._device = device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._copied: torch.cuda.Event | None = None

    def __call__(self, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if self._stream is None:
            return tuple(tensor.clone() for tensor in tensors)
        consumer = torch.cuda.current_stream(self._device)
        with torch.cuda.stream(self._stream):
            copies = tuple(tensor.to(self._device, non_blocking=True) for tensor in tensors)
        self._copied = self._stream.record_event()
        consumer.wait_event(self._copied)
        for copy in copies:
            copy.record_stream(consumer)  # allocated on the side stream, used on the consumer's
        return copies

    def pulled(self, batches: Iterator[tuple[torch.Tensor, ...]]) -> Iterator[tuple[torch.Tensor, ...]]:
        """FFCV's batches, the next one requested only once the copy out of the last has run."""
        for batch in batches:
            yield batch
            if self._copied is not None:
                self._copied.synchronize()


class _GivenOrder:
    """A traversal order that returns what the fastlt loader set for the coming epoch."""

    def __init__(self) -> None:
        self.order: np.ndarray | None = None

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.order


class FFCVLoader:
    """Yields Batch(images, labels, indices) from an FFCV part, as NativeLoader does from a native one.

    ``rows`` are the part's rows in the split (all when None). Batches follow the permutation
    drawn from ``generator``, cut by ``batch_bounds`` (the last partial batch kept without
    drop_last, a too small last batch joined to the one before), and with ``shard`` = (rank,
    processes) this rank's share of each. FFCV decodes this rank's rows in that order in batches
    of its usual share; they are re-cut into the exact shares where those differ.
    """

    def __init__(self, path: Path, num_rows: int, rows: np.ndarray | None, batch_size: int, device: torch.device,
                 generator: torch.Generator, shuffle: bool = True, drop_last: bool = False, workers: int = 2,
                 shard: tuple[int, int] = (0, 1)):
        require_ffcv()
        self._rows = np.arange(num_rows, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self._bounds = batch_bounds(len(self._rows), batch_size, drop_last, shard[1])
        self._generator, self._shuffle, self._shard = generator, shuffle, shard
        first_share = len(shard_of(np.arange(batch_size), shard)[0])
        self._loader = _ffcv_loader(path, first_share, workers, self._rows)
        self._handover = _Handover(torch.device(device))
        self._order = _GivenOrder()
        self._loader.traversal_order = self._order

    @property
    def num_samples(self) -> int:
        return len(self._rows)

    def __len__(self) -> int:
        return len(self._bounds)

    def __iter__(self) -> Iterator[Batch]:
        order = self._rows[epoch_order(self.num_samples, self._generator, self._shuffle).cpu().numpy()]
        shares = [shard_of(order[start:end], self._shard) for start, end in self._bounds]
        self._order.order = np.concatenate([rows for rows, _ in shares])  # this rank's rows, epoch order
        with keeping_torch_threads():
            stream = self._handover.pulled(iter(self._loader))
        pending: list[tuple[torch.Tensor, ...]] = []
        for rows, sizes in shares:
            images, labels, indices = self._handover(_take(stream, pending, len(rows)))
            yield Batch(images=images.permute(0, 3, 1, 2), labels=labels.view(-1).long(),
                        indices=indices.view(-1).long(), shard_sizes=sizes)


def _take(stream: Iterator, pending: list[tuple[torch.Tensor, ...]], count: int) -> tuple[torch.Tensor, ...]:
    """The next ``count`` rows of FFCV's batches (images, labels, indices). FFCV reuses its output buffers
    for the next batch, so rows kept across a batch are cloned first; a batch used whole is not copied."""
    pieces: list[tuple[torch.Tensor, ...]] = []
    have = 0
    while have < count:
        if not pending:
            pieces = [tuple(tensor.clone() for tensor in piece) for piece in pieces]
            pending.append(next(stream))
        piece = pending.pop(0)
        take = min(count - have, len(piece[1]))
        pieces.append(tuple(tensor[:take] for tensor in piece))
        if take < len(piece[1]):
            pending.insert(0, tuple(tensor[take:].clone() for tensor in piece))
        have += take
    if len(pieces) == 1:
        return pieces[0]
    return tuple(torch.cat(parts) for parts in zip(*pieces))


def read_beton_rows(path: Path, rows: np.ndarray, workers: int = 2) -> np.ndarray:
    """The images of ``rows`` of a .beton, decoded on the CPU in the order given: [len(rows), H, W, 3] uint8."""
    require_ffcv()
    loader = _ffcv_loader(path, min(len(rows), READ_BATCH), workers, np.asarray(rows, dtype=np.int64))
    with keeping_torch_threads():
        epoch = iter(loader)
    return np.concatenate([images.numpy().copy() for images, _, _ in epoch])  # FFCV reuses its buffers
