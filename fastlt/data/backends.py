"""Where a store's images live and how batches come out of them: native arrays, FFCV or DALI files.

Every store has meta.json and ``{part}_labels.npy``; the images are ``{part}_images.npy``
(native), ``{part}.beton`` (FFCV) or ``{part}_jpeg.bin`` + ``{part}_offsets.npy`` (DALI).
Whatever the backend, ``make_loader`` yields ``Batch(images, labels, indices)`` on the device
in the order NativeLoader would, and a part's images read as an array (``EncodedImages``
decodes the rows asked for), so methods, views, the BCL memory, the monitor and linear
evaluation never see the difference.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fastlt.data.loader import NativeLoader, check_batching
from fastlt.errors import FastltError

BACKENDS = ("native", "ffcv", "dali")


def image_files(backend: str, part: str) -> dict[str, str]:
    """The files holding a part's images, by the name their checksum has in meta.json."""
    if backend == "ffcv":
        return {"images": f"{part}.beton"}
    if backend == "dali":
        return {"images": f"{part}_jpeg.bin", "offsets": f"{part}_offsets.npy"}
    return {"images": f"{part}_images.npy"}


def write_images(backend: str, folder: Path, part: str, images: np.ndarray, labels: np.ndarray,
                 options: dict[str, Any]) -> None:
    """Encode a part's uint8 images into the backend's files in ``folder`` (native parts are written by the
    store writer itself)."""
    if backend == "ffcv":
        from fastlt.data.ffcv_backend import write_beton

        write_beton(folder / f"{part}.beton", images, labels, options["image_format"], options["quality"],
                    options["workers"])
    elif backend == "dali":
        from fastlt.data.dali_backend import require_dali, write_jpeg_part

        require_dali()
        write_jpeg_part(folder, part, images, options["quality"], options["workers"])
    else:
        raise FastltError(f"--format {backend!r}: expected one of {BACKENDS}")


class EncodedImages:
    """A part's images as a read-only [N, H, W, 3] uint8 array-like that decodes only the rows indexed."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, decode_rows: Callable[[np.ndarray], np.ndarray], count: int, height: int, width: int):
        self._decode_rows = decode_rows
        self.shape = (count, height, width, 3)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = np.arange(self.shape[0])[key]
        if np.ndim(rows) == 0:
            return self[np.array([rows])][0]
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros((0, *self.shape[1:]), dtype=np.uint8)
        return self._decode_rows(rows)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        images = self[:]
        return images if dtype is None else images.astype(dtype)


def encoded_images(backend: str, folder: Path, part: str, labels: np.ndarray, height: int,
                   width: int) -> EncodedImages:
    """The images of an FFCV or DALI part, decoded on the CPU when indexed."""
    if backend == "ffcv":
        from fastlt.data.ffcv_backend import read_beton_rows

        def decode(rows: np.ndarray) -> np.ndarray:
            return read_beton_rows(folder / f"{part}.beton", rows)
    else:
        from fastlt.data.dali_backend import read_jpeg_rows

        def decode(rows: np.ndarray) -> np.ndarray:
            return read_jpeg_rows(folder, part, rows)
    return EncodedImages(decode, len(labels), height, width)


def decode_threads() -> int:
    """This process's share of the usable cores for decoding: torchrun starts LOCAL_WORLD_SIZE processes on a node,
    and 8 of them on 16 cores each starting 16 threads would oversubscribe the cores 8 times."""
    try:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        raise FastltError(f"LOCAL_WORLD_SIZE {os.environ['LOCAL_WORLD_SIZE']!r}: not an integer") from None
    return max(1, len(os.sched_getaffinity(0)) // max(1, processes))


def make_loader(store: Any, part: str, indices: np.ndarray | None, batch_size: int, device: torch.device,
                generator: torch.Generator, shuffle: bool = True, drop_last: bool = False,
                workers: int | None = None, shard: tuple[int, int] = (0, 1)) -> Any:
    """The loader of the store's backend over ``indices`` of ``part``; every one takes the NativeLoader's order.
    FFCV and DALI decode with ``workers`` threads (default: ``decode_threads``). ``shard`` = (rank, processes):
    each global batch's share of this rank (native: the split resident on every device; FFCV and DALI
    decode the share only)."""
    backend = store.backend
    workers = workers or decode_threads()
    if backend == "native":
        return NativeLoader(store.part(part), indices, batch_size, device, generator, shuffle, drop_last, shard)
    labels = store.labels(part)
    rows = np.arange(len(labels), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    check_batching(len(rows), batch_size, drop_last)
    if backend == "ffcv":
        from fastlt.data.ffcv_backend import FFCVLoader

        return FFCVLoader(store.path / f"{part}.beton", len(labels), rows, batch_size, device, generator, shuffle,
                          drop_last, workers, shard)
    from fastlt.data.dali_backend import DALILoader

    return DALILoader(store.path, part, labels, rows, batch_size, device, generator, shuffle, drop_last, workers,
                      shard)
