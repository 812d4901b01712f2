"""A store: a folder of labels and images plus meta.json, written once, read memory-mapped.

Layout (``version`` 1)::

    out/{part}_labels.npy   int64 [N]
    out/{part}_images.npy   uint8 [N, H, W, 3] (NHWC, so one part is one contiguous block); native
    out/{part}.beton        FFCV: image (JPEG or raw), label, index; backend "ffcv"
    out/{part}_jpeg.bin     DALI: the images as JPEGs back to back, and
    out/{part}_offsets.npy  where each one starts; backend "dali"
    out/lists/{name}.npy    int64 index lists into a part (ImageNet-100-LT's LT, balanced, few-shot
                            and val lists into its one train part); recipes name them "store:{name}"
    out/meta.json           format, version, name, backend, class_names, num_classes, image_shape,
                            parts: {part: {count, class_counts, sha256: {images, labels, ...}}},
                            lists: {name: {part, count, class_counts, sha256, ...}}, source

All backends hold the same fixed-size uint8 images; a store without a ``backend`` key is
native. The store names each backend's files; how FFCV and DALI files are written and read is
theirs: ``fastlt.data.backends`` registers a ``Codec`` for each, so the store reaches them
without importing them (they stand on the store, through the loader).

A store is built in a hidden sibling folder and renamed into place only when every file
is written and synced, so a folder at ``out`` is always a complete store; an existing
folder is never touched unless the caller asks to overwrite it, and even then the old
store is only removed after the new one is in place.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fastlt.errors import FastltError
from fastlt.files import check_free, file_digest, read_text

STORE_FORMAT = "fastlt-native"
STORE_VERSION = 1
META_FILE = "meta.json"
LISTS_FOLDER = "lists"
STORE_LIST = "store:"  # how recipes name a kept list: "store:lt" is lists/lt.npy of the run's store
BACKENDS = ("native", "ffcv", "dali")


@dataclass(frozen=True)
class StorePart:
    """One part of a data set (train or test): images and their labels, in store order."""

    images: np.ndarray  # [N, H, W, 3] uint8
    labels: np.ndarray  # [N] int64


def image_files(backend: str, part: str) -> dict[str, str]:
    """The files holding a part's images, by the name their checksum has in meta.json."""
    if backend == "ffcv":
        return {"images": f"{part}.beton"}
    if backend == "dali":
        return {"images": f"{part}_jpeg.bin", "offsets": f"{part}_offsets.npy"}
    return {"images": f"{part}_images.npy"}


@dataclass(frozen=True)
class Codec:
    """How a backend other than native writes a part's images into its files and reads them back."""

    # (folder, part, images, labels, options) -> None: encode uint8 [N, H, W, 3] images into the part's files
    write: Callable[[Path, str, np.ndarray, np.ndarray, dict[str, Any]], None]
    # (folder, part, count, height, width) -> a [count, H, W, 3] uint8 array-like decoding the rows indexed
    read: Callable[[Path, str, int, int, int], Any]


_CODECS: dict[str, Codec] = {}


def register_codec(backend: str, codec: Codec) -> None:
    """Make ``backend``'s files writable and readable by the store (``fastlt.data.backends`` calls this)."""
    if backend not in BACKENDS or backend == "native":
        raise ValueError(f"register_codec: {backend!r} is not one of the encoded backends {BACKENDS[1:]}")
    _CODECS[backend] = codec


def _codec(backend: str) -> Codec:
    """The registered codec of ``backend``; importing ``fastlt.data`` registers them all."""
    try:
        return _CODECS[backend]
    except KeyError:
        raise FastltError(f"store backend {backend!r}: no codec registered (import fastlt.data.backends)") from None


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    """Flush a written file's bytes to disk."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _check_parts(name: str, class_names: list[str], parts: dict[str, StorePart]) -> tuple[int, int]:
    """Reject parts that would make a store the readers cannot trust; returns the image (H, W)."""
    if not parts:
        raise FastltError(f"store {name!r}: no parts to write")
    shapes = set()
    for part_name, part in parts.items():
        where = f"store {name!r} part {part_name!r}"
        if not part_name.isidentifier():
            raise FastltError(f"{where}: part names must be plain identifiers")
        images, labels = part.images, part.labels
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise FastltError(f"{where}: images must be uint8 [N,H,W,3], got {images.dtype} {list(images.shape)}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
            found = f"{labels.dtype} {list(labels.shape)}"
            raise FastltError(f"{where}: labels must be integer [{images.shape[0]}], got {found}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise FastltError(f"{where}: labels must lie in [0, {len(class_names)})")
        shapes.add(images.shape[1:3])
    if len(shapes) != 1:
        raise FastltError(f"store {name!r}: parts have different image sizes {sorted(shapes)}")
    return shapes.pop()


def _is_store(path: Path) -> bool:
    """True when ``path`` holds a meta.json of this format (any version), i.e. something we wrote."""
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == STORE_FORMAT


class StoreWriter:
    """Builds a store in a hidden sibling folder; ``commit`` renames it into place.

    Parts come whole (``add_part``, for data that fits in memory) or as staged arrays the
    caller fills row by row (``new_part``, for image sets larger than memory). Leaving the
    ``with`` block without a commit removes the staging folder: nothing partial is left.
    """

    def __init__(self, out: Path, name: str, class_names: list[str], source: dict, overwrite: bool = False,
                 backend: str = "native", encode: dict | None = None):
        if backend not in BACKENDS:
            raise FastltError(f"--format {backend!r}: expected one of {', '.join(BACKENDS)}")
        self.out, self.name, self.class_names, self.source = Path(out), name, list(class_names), source
        self.backend, self.encode = backend, encode or {}
        # Something else of that name is never replaced, --overwrite or not: say so rather than offer --overwrite.
        if self.out.exists() and (not self.out.is_dir() or (any(self.out.iterdir()) and not _is_store(self.out))):
            raise FastltError(f"{self.out}: exists and is not a fastlt store; it will not be replaced "
                              "(choose another --out)")
        check_free([self.out], overwrite)
        self._tag = uuid.uuid4().hex[:8]
        self.staging = self.out.parent / f".{self.out.name}.partial-{self._tag}"
        self._parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lists: dict[str, dict] = {}

    def __enter__(self) -> StoreWriter:
        self._made = [folder for folder in (self.out.parent, *self.out.parent.parents) if not folder.exists()]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir()
        return self

    def __exit__(self, *exc_info: object) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        if not self.out.exists():  # not committed: the folders made for it go too
            for folder in self._made:  # deepest first
                try:
                    folder.rmdir()
                except OSError:
                    break

    def add_part(self, part_name: str, part: StorePart) -> None:
        """A part held in memory, written as it is."""
        _check_parts(self.name, self.class_names, {part_name: part})
        self._parts[part_name] = (part.images, np.asarray(part.labels, dtype=np.int64))

    def new_part(self, part_name: str, count: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(images [count, H, W, 3] uint8 memory-mapped in the staging folder, labels [count] int64) to fill."""
        images = np.lib.format.open_memmap(self.staging / f"{part_name}_images.npy", mode="w+", dtype=np.uint8,
                                           shape=(count, height, width, 3))
        labels = np.zeros(count, dtype=np.int64)
        self._parts[part_name] = (images, labels)
        return images, labels

    def keep_rows(self, part_name: str, count: int) -> None:
        """Cut a staged part to its first ``count`` rows (after dropping unreadable images)."""
        images, labels = self._parts[part_name]
        if count == len(labels):
            return
        kept_file = self.staging / f".{part_name}_kept.npy"
        kept = np.lib.format.open_memmap(kept_file, mode="w+", dtype=np.uint8, shape=(count, *images.shape[1:]))
        for start in range(0, count, 4096):  # chunked: the part may be larger than memory
            end = min(start + 4096, count)
            kept[start:end] = images[start:end]
        os.replace(kept_file, self.staging / f"{part_name}_images.npy")
        self._parts[part_name] = (kept, labels[:count].copy())

    def add_list(self, list_name: str, part_name: str, rows: np.ndarray, about: dict | None = None) -> None:
        """An index list into a part already added (rows as the part is finally written), kept as
        ``lists/{list_name}.npy``; ``about`` (its source file, images dropped) goes to meta.json."""
        if not list_name.isidentifier():
            raise FastltError(f"store {self.name!r} list {list_name!r}: list names must be plain identifiers")
        if part_name not in self._parts:
            raise FastltError(f"store {self.name!r} list {list_name!r}: no part {part_name!r} to index")
        labels = self._parts[part_name][1]
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= len(labels))) or \
                len(np.unique(rows)) != len(rows):
            raise FastltError(f"store {self.name!r} list {list_name!r}: rows must be distinct rows of part "
                              f"{part_name!r} (0..{len(labels) - 1})")
        folder = self.staging / LISTS_FOLDER
        folder.mkdir(exist_ok=True)
        file = folder / f"{list_name}.npy"
        np.save(file, rows, allow_pickle=False)
        _fsync_file(file)
        self._lists[list_name] = {
            "part": part_name, "count": int(len(rows)),
            "class_counts": np.bincount(labels[rows], minlength=len(self.class_names)).tolist(),
            "sha256": file_digest(file), **(about or {}),
        }

    def commit(self) -> Path:
        """Sync every file, write meta.json, and swap the staging folder in (the old store out, if any)."""
        height, width = _check_parts(self.name, self.class_names,
                                     {name: StorePart(*arrays) for name, arrays in self._parts.items()})
        meta_parts = {}
        for part_name, (images, labels) in self._parts.items():
            staged = self.staging / f"{part_name}_images.npy"
            if self.backend != "native":
                _codec(self.backend).write(self.staging, part_name, images, labels, self.encode)
                del images
                staged.unlink(missing_ok=True)  # the pixels now live in the backend's files
            elif isinstance(images, np.memmap):
                images.flush()
            else:
                np.save(staged, np.ascontiguousarray(images), allow_pickle=False)
            np.save(self.staging / f"{part_name}_labels.npy", labels, allow_pickle=False)
            files = {**image_files(self.backend, part_name), "labels": f"{part_name}_labels.npy"}
            for file in files.values():
                _fsync_file(self.staging / file)
            meta_parts[part_name] = {
                "count": int(labels.shape[0]),
                "class_counts": np.bincount(labels, minlength=len(self.class_names)).tolist(),
                "sha256": {kind: file_digest(self.staging / file) for kind, file in files.items()},
            }
        self._parts.clear()
        meta = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "name": self.name,
            "backend": self.backend,
            "class_names": self.class_names,
            "num_classes": len(self.class_names),
            "image_shape": [int(height), int(width), 3],
            "parts": meta_parts,
            "lists": self._lists,
            "source": self.source,
        }
        if self._lists:
            _fsync_dir(self.staging / LISTS_FOLDER)
        with open(self.staging / META_FILE, "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(self.staging)
        retired = self.out.parent / f".{self.out.name}.old-{self._tag}"
        if self.out.exists():
            os.replace(self.out, retired)
        try:
            os.replace(self.staging, self.out)
        except BaseException:
            if retired.exists():
                os.replace(retired, self.out)
            raise
        _fsync_dir(self.out.parent)
        shutil.rmtree(retired, ignore_errors=True)
        return self.out


def write_native_store(
    out: Path,
    name: str,
    class_names: list[str],
    parts: dict[str, StorePart],
    source: dict,
    overwrite: bool = False,
    backend: str = "native",
    encode: dict | None = None,
) -> Path:
    """Write a store of in-memory parts atomically and return its path (``encode``: the FFCV / DALI
    options their ``Codec.write`` takes, see ``fastlt.data.backends``).

    Refuses an existing ``out`` unless ``overwrite``; with ``overwrite`` it still refuses a
    non-empty folder that is not a fastlt store (a user's folder is never deleted), and
    swaps the old store out only after the new one is complete.
    """
    _check_parts(name, class_names, parts)
    with StoreWriter(out, name, class_names, source, overwrite, backend, encode) as writer:
        for part_name, part in parts.items():
            writer.add_part(part_name, part)
        return writer.commit()


class Store:
    """A native store opened for reading: its meta.json and memory-mapped parts."""

    def __init__(self, path: Path, meta: dict) -> None:
        self._path = path
        self._meta = meta

    @classmethod
    def open(cls, path: Path, expect: str | None = None) -> Store:
        """Open ``path``, checking that it is a complete store of a version this code reads
        (and, with ``expect``, of that data set: "cifar10", "cifar100", "digits")."""
        path = Path(path)
        meta_file = path / META_FILE
        if not path.is_dir():
            raise FastltError(f"{path}: no such store folder (create one with `fastlt convert`)")
        text = read_text(meta_file, missing=f"{path}: not a fastlt store (no {META_FILE})")
        try:
            meta = json.loads(text)
        except ValueError as exc:
            raise FastltError(f"{meta_file}: unreadable ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
            raise FastltError(f"{meta_file}: not a fastlt store (format is not {STORE_FORMAT!r})")
        if meta.get("version") != STORE_VERSION:
            version = meta.get("version")
            raise FastltError(f"{meta_file}: store version {version!r} unknown (this fastlt reads {STORE_VERSION})")
        if expect is not None and meta.get("name") != expect:
            raise FastltError(f"{path}: a store of {meta.get('name')!r}, not of {expect!r}")
        return cls(path, meta)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def name(self) -> str:
        return self._meta["name"]

    @property
    def class_names(self) -> list[str]:
        return list(self._meta["class_names"])

    @property
    def num_classes(self) -> int:
        return int(self._meta["num_classes"])

    @property
    def parts(self) -> list[str]:
        return list(self._meta["parts"])

    @property
    def meta(self) -> dict:
        """The parsed meta.json (counts, checksums, source), for reports and run records."""
        return self._meta

    @property
    def lists(self) -> list[str]:
        """Names of the index lists the store keeps (``lists/{name}.npy``)."""
        return list(self._meta.get("lists", {}))

    def list_file(self, name: str) -> Path:
        """Where index list ``name`` lies (``lists/{name}.npy``; a pattern such as ``x_{shots}`` is kept for
        formatting). Whoever loads it checks that it exists (``fastlt.data.splits.load_split``), so a
        recipe may name lists its run never reads."""
        return self._path / LISTS_FOLDER / f"{name}.npy"

    def identity(self, part: str) -> dict:
        """What a part holds, independent of where the store lies: name, count, classes, checksums."""
        entry = self._entry(part)
        return {"store": self.name, "part": part, "count": int(entry["count"]), "num_classes": self.num_classes,
                "sha256": dict(entry["sha256"])}

    @property
    def backend(self) -> str:
        """Where the images live: "native", "ffcv" or "dali" (stores from before the key are native)."""
        return self._meta.get("backend", "native")

    def _entry(self, name: str) -> dict:
        if name not in self._meta["parts"]:
            raise FastltError(f"{self._path}: no part {name!r} (the store has {', '.join(self.parts)})")
        return self._meta["parts"][name]

    def labels(self, name: str) -> np.ndarray:
        """One part's labels, without touching its images."""
        entry = self._entry(name)
        file = self._path / f"{name}_labels.npy"
        try:
            labels = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FastltError(f"{file}: unreadable ({exc})") from None
        if labels.dtype != np.int64 or labels.shape != (entry["count"],):
            raise FastltError(f"{file}: expected int64 [{entry['count']}], found {labels.dtype} {list(labels.shape)}")
        return labels

    def part(self, name: str, verify: bool = False) -> StorePart:
        """Load one part: labels in memory; images memory-mapped (native, paged in on use) or decoded on
        the CPU when indexed (FFCV, DALI).

        verify=True re-hashes every file of the part against meta.json first, to catch a damaged
        copy before days of training on it.
        """
        entry = self._entry(name)
        files = {**image_files(self.backend, name), "labels": f"{name}_labels.npy"}
        for kind, file in files.items():
            path = self._path / file
            if not path.is_file():
                raise FastltError(f"{path}: missing from the store")
            if verify and file_digest(path) != entry["sha256"][kind]:
                raise FastltError(f"{path}: checksum does not match meta.json (the file is damaged)")
        labels = self.labels(name)
        height, width, _ = self._meta["image_shape"]
        if self.backend != "native":
            return StorePart(images=_codec(self.backend).read(self._path, name, len(labels), height, width),
                             labels=labels)
        images_file = self._path / files["images"]
        try:
            images = np.load(images_file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FastltError(f"{self._path}: part {name!r} unreadable ({exc})") from None
        expected = (entry["count"], height, width, 3)
        if images.dtype != np.uint8 or images.shape != expected:
            raise FastltError(f"{images_file}: expected uint8 {list(expected)}, found {images.dtype} "
                              f"{list(images.shape)}")
        return StorePart(images=images, labels=labels)


_IDENTITY_MEANING = {"store": "data set", "part": "store part", "count": "number of images",
                     "num_classes": "number of classes", "sha256": "image and label checksums",
                     "split_sha256": "split indices"}


def check_same_data(recorded: dict, current: dict, where: str) -> None:
    """Refuse data other than what a run trained on (the keys of ``current`` are compared, in order)."""
    for key in _IDENTITY_MEANING:
        if key in current and recorded.get(key) != current[key]:
            raise FastltError(f"{where}: the {_IDENTITY_MEANING[key]} differ from what the run trained on "
                              f"({_short(recorded.get(key))} then, {_short(current[key])} now)")


def _short(value: object) -> str:
    """Checksums shortened for a one-line message; other values as they are."""
    if isinstance(value, dict):
        return ", ".join(f"{key} {_short(item)}" for key, item in value.items())
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    return repr(value)
