"""DALI stores: each part's images as re-encoded JPEGs in one file, and a loader that decodes them with DALI.

Format: ``{part}_jpeg.bin`` holds the encoded images back to back and ``{part}_offsets.npy``
(int64 [N + 1]) where each starts. One memory-mapped file instead of a file per image: no
open() per sample, one sequential read on a cold disk, and the bytes go to DALI's decoder
without a copy. DALI's own file reader was not used because its shuffling is a buffer of
``initial_fill`` samples (or a whole-set shuffle only after the first epoch), so neither an
exact permutation per epoch nor the run's seed would carry over; fastlt feeds each batch's
encoded images through ``external_source`` in the permutation it draws from the run's torch
generator, as NativeLoader does. So an epoch sees every index of the split once, batches
match a native run of the same seed, and resume is exact.

Decoding: on a CPU DALI's ``decoders.image`` (libjpeg-turbo) with ``device_id=None``; where
CUDA is present the "mixed" decoder (nvJPEG) writes to the GPU. The decoded pixels differ
from PIL's by the JPEG decoders' rounding (a level or two), not by more.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from fastlt.data.loader import Batch, batch_bounds, epoch_order, shard_of
from fastlt.data.workers import ordered_map
from fastlt.errors import FastltError

READ_BATCH = 512  # rows decoded per DALI batch when a part is read as an array
PREFETCH = 2  # batches DALI decodes ahead of the one handed out
ENCODE_CHUNK = 256  # rows per task when a part is encoded in worker processes


def require_dali() -> None:
    """One line saying how to get DALI, instead of an ImportError."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as error:
        raise FastltError(f"DALI is not installed ({error}); install it with `pip install 'fastlt[dali]'`") from None


def _encode_rows(task: tuple[np.ndarray, int]) -> list[bytes]:
    """JPEG bytes of each image of a chunk (runs in a worker process)."""
    from PIL import Image

    images, quality = task
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality)
        encoded.append(buffer.getvalue())
    return encoded


def write_jpeg_part(folder: Path, part: str, images: np.ndarray, quality: int, workers: int = 1) -> None:
    """Encode every image of a part as JPEG (PIL, 4:2:0) into ``{part}_jpeg.bin`` with its offsets, in
    ``workers`` processes, chunk by chunk (the part may be larger than memory)."""
    offsets = np.zeros(len(images) + 1, dtype=np.int64)
    chunks = ((images[start:start + ENCODE_CHUNK], quality) for start in range(0, len(images), ENCODE_CHUNK))
    with open(folder / f"{part}_jpeg.bin", "wb") as blob, ordered_map(workers) as mapped:
        row = 0
        for encoded in mapped(_encode_rows, chunks, 1):
            for data in encoded:
                blob.write(data)
                offsets[row + 1] = offsets[row] + len(data)
                row += 1
    np.save(folder / f"{part}_offsets.npy", offsets, allow_pickle=False)


class _Decoder:
    """A DALI pipeline that decodes batches of encoded images to uint8 HWC, on the CPU or (mixed) the GPU.

    The pipeline pulls the encoded batches itself (``external_source`` with a source) and keeps
    ``PREFETCH`` of them scheduled: DALI's threads decode the next batches while the caller trains
    on this one, instead of decoding only when asked.
    """

    def __init__(self, max_batch: int, device: torch.device, threads: int, where: str):
        require_dali()
        self.where = where
        from nvidia.dali import fn, pipeline_def, types

        self.on_gpu = device.type == "cuda"
        self.device = device
        self._pending: Iterator[list[np.ndarray]] = iter(())
        self._running: Iterator[torch.Tensor] | None = None

        @pipeline_def
        def decode():
            encoded = fn.external_source(source=self._next_encoded, dtype=types.UINT8, ndim=1)
            return fn.decoders.image(encoded, device="mixed" if self.on_gpu else "cpu", output_type=types.RGB)

        device_id = (device.index or 0) if self.on_gpu else None
        self.pipeline = decode(batch_size=max_batch, num_threads=max(1, threads), device_id=device_id,
                               prefetch_queue_depth=PREFETCH)
        self.pipeline.build()

    def _next_encoded(self) -> list[np.ndarray]:
        """DALI's source: the next batch of encoded images; StopIteration ends DALI's epoch."""
        return next(self._pending)

    def decode(self, encoded: Iterator[list[np.ndarray]]) -> Iterator[torch.Tensor]:
        """[B, H, W, 3] uint8 on the loader's device per batch of ``encoded``, each a tensor of its own. On CUDA
        the outputs come on torch's current stream and are copied there: no wait on the host. A pass left
        unfinished is closed first: the pipeline serves one pass at a time."""
        if self._running is not None:
            self._running.close()
        self._running = self._decoded(encoded)
        return self._running

    def _decoded(self, encoded: Iterator[list[np.ndarray]]) -> Iterator[torch.Tensor]:
        self._pending = encoded
        stream = torch.cuda.current_stream(self.device) if self.on_gpu else None
        try:
            while True:
                try:
                    (images,) = self.pipeline.run(stream)
                except StopIteration:
                    return
                except RuntimeError as error:  # DALI's report of an image it cannot decode, a long trace
                    # DALI 2.4 on a CPU raises here, or crashes the process (SIGSEGV) in about half the runs that
                    # meet a damaged image: the framing check before it and `--verify` are the dependable guards.
                    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    raise FastltError(f"{self.where}: DALI cannot decode an image of this batch ({first}); "
                                      "convert the data again (`fastlt convert ... --format dali --verify`)") from None
                yield self._to_torch(images, stream)
        finally:
            self._pending = iter(())
            with contextlib.suppress(StopIteration, RuntimeError):  # a pass left early: drop what is scheduled
                while True:
                    self.pipeline.run(stream)
            self.pipeline.reset()

    def _to_torch(self, images: Any, stream: torch.cuda.Stream | None) -> torch.Tensor:
        """DALI's output batch as a torch tensor that outlives DALI's buffer."""
        if self.on_gpu:
            from nvidia.dali.plugin.pytorch import feed_ndarray

            tensor = images.as_tensor()
            out = torch.empty(tensor.shape(), dtype=torch.uint8, device=self.device)
            feed_ndarray(tensor, out, cuda_stream=stream)
            return out
        return torch.from_numpy(images.as_array())


class _JpegPart:
    """A DALI part's encoded images: the memory-mapped blob and where each image starts."""

    def __init__(self, folder: Path, part: str):
        self.path = folder / f"{part}_jpeg.bin"
        self.offsets = np.load(folder / f"{part}_offsets.npy", allow_pickle=False)
        self.blob = np.memmap(self.path, dtype=np.uint8, mode="r")

    def encoded(self, rows: np.ndarray) -> list[np.ndarray]:
        """The encoded bytes of each row (views into the memory map), each checked to be framed as a JPEG."""
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        framed = ((self.blob[starts] == 0xFF) & (self.blob[starts + 1] == 0xD8)
                  & (self.blob[ends - 2] == 0xFF) & (self.blob[ends - 1] == 0xD9))
        if not framed.all():  # damage DALI's decoder may not survive (_Decoder): name it before it runs
            row = int(rows[np.argmin(framed)])
            raise FastltError(f"{self.path}: image {row} is not a whole JPEG (no start or end marker); convert the "
                              "data again (`fastlt convert ... --format dali --verify`)")
        return [self.blob[start:end] for start, end in zip(starts.tolist(), ends.tolist())]


class DALILoader:
    """Yields Batch(images, labels, indices) from a DALI part, as NativeLoader does from a native one.

    ``rows`` are the part's rows in the split (all when None); the order, the kept last batch and
    the folding of a single last sample are NativeLoader's (``batch_bounds``).
    """

    def __init__(self, folder: Path, part: str, labels: np.ndarray, rows: np.ndarray | None, batch_size: int,
                 device: torch.device, generator: torch.Generator, shuffle: bool = True, drop_last: bool = False,
                 workers: int = 2, shard: tuple[int, int] = (0, 1)):
        self._jpegs = _JpegPart(folder, part)
        self._rows = np.arange(len(labels), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self._device, self._generator = torch.device(device), generator
        # The split's labels and store indices live on the device, gathered there by each batch's positions.
        self._labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)[self._rows]).to(self._device)
        self._indices = torch.from_numpy(self._rows).to(self._device)
        self._shuffle = shuffle
        self._bounds = batch_bounds(len(self._rows), batch_size, drop_last, shard[1])
        self._shard = shard
        self._decoder = _Decoder(max(end - start for start, end in self._bounds), self._device, workers,
                                 str(self._jpegs.path))

    @property
    def num_samples(self) -> int:
        return len(self._rows)

    def __len__(self) -> int:
        return len(self._bounds)

    def __iter__(self) -> Iterator[Batch]:
        positions = epoch_order(self.num_samples, self._generator, self._shuffle)
        on_host, on_device = positions.cpu().numpy(), positions.to(self._device)  # one copy an epoch
        encoded = (self._jpegs.encoded(self._rows[shard_of(on_host[start:end], self._shard)[0]])
                   for start, end in self._bounds)  # this rank decodes its share only, DALI pulls ahead
        for images, (start, end) in zip(self._decoder.decode(encoded), self._bounds):
            chosen, sizes = shard_of(on_device[start:end], self._shard)
            yield Batch(images=images.permute(0, 3, 1, 2), labels=self._labels[chosen],
                        indices=self._indices[chosen], shard_sizes=sizes)


def read_jpeg_rows(folder: Path, part: str, rows: np.ndarray, workers: int = 2) -> np.ndarray:
    """The images of ``rows`` of a DALI part, decoded on the CPU in the order given: [len(rows), H, W, 3] uint8."""
    jpegs = _JpegPart(folder, part)
    decoder = _Decoder(min(len(rows), READ_BATCH), torch.device("cpu"), workers, str(jpegs.path))
    encoded = (jpegs.encoded(rows[start:start + READ_BATCH]) for start in range(0, len(rows), READ_BATCH))
    return np.concatenate([images.numpy() for images in decoder.decode(encoded)])


def check_dali_part(folder: Path, part: str, count: int) -> None:
    """The offsets cover the blob exactly and count ``count`` images; a truncated copy fails here."""
    offsets = np.load(folder / f"{part}_offsets.npy", allow_pickle=False)
    size = (folder / f"{part}_jpeg.bin").stat().st_size
    if offsets.shape != (count + 1,) or offsets[-1] != size or np.any(np.diff(offsets) <= 0):
        raise FastltError(f"{folder / f'{part}_jpeg.bin'}: does not match its offsets ({count} images expected)")
