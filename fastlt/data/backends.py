"""Where a store's images live and how batches come out of them: native arrays, FFCV or DALI files.

Every store has meta.json and ``{part}_labels.npy``; the images are ``{part}_images.npy``
(native), ``{part}.beton`` (FFCV) or ``{part}_jpeg.bin`` + ``{part}_offsets.npy`` (DALI).
Whatever the backend, ``make_loader`` yields ``Batch(images, labels, indices)`` on the device
in the order NativeLoader would, and a part's images read as an array (``EncodedImages``
decodes the rows asked for), so methods, views, the BCL memory, the monitor and linear
evaluation never see the difference. Importing this module (``fastlt.data`` does) registers the
FFCV and DALI codecs with the store, which names their files but does not import them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fastlt.data.dali_backend import DALILoader, check_dali_part, read_jpeg_rows, require_dali, write_jpeg_part
from fastlt.data.ffcv_backend import FFCVLoader, read_beton_rows, write_beton
from fastlt.data.loader import NativeLoader, check_batching
from fastlt.data.store import Codec, register_codec
from fastlt.errors import FastltError


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


def _write_ffcv(folder: Path, part: str, images: np.ndarray, labels: np.ndarray, options: dict[str, Any]) -> None:
    write_beton(folder / f"{part}.beton", images, labels, options["image_format"], options["quality"],
                options["workers"])


def _read_ffcv(folder: Path, part: str, count: int, height: int, width: int) -> EncodedImages:
    def decode(rows: np.ndarray) -> np.ndarray:
        return read_beton_rows(folder / f"{part}.beton", rows)

    return EncodedImages(decode, count, height, width)


def _write_dali(folder: Path, part: str, images: np.ndarray, labels: np.ndarray, options: dict[str, Any]) -> None:
    require_dali()
    write_jpeg_part(folder, part, images, options["quality"], options["workers"])


def _read_dali(folder: Path, part: str, count: int, height: int, width: int) -> EncodedImages:
    check_dali_part(folder, part, count)  # a truncated copy fails when opened, not at the first batch

    def decode(rows: np.ndarray) -> np.ndarray:
        return read_jpeg_rows(folder, part, rows)

    return EncodedImages(decode, count, height, width)


register_codec("ffcv", Codec(write=_write_ffcv, read=_read_ffcv))
register_codec("dali", Codec(write=_write_dali, read=_read_dali))


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
        return FFCVLoader(store.path / f"{part}.beton", len(labels), rows, batch_size, device, generator, shuffle,
                          drop_last, workers, shard)
    return DALILoader(store.path, part, labels, rows, batch_size, device, generator, shuffle, drop_last, workers,
                      shard)
