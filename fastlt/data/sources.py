"""Raw data readers: the official CIFAR python tarballs (read or downloaded) and the built-in coloured digits.

Each reader returns ``({"train": StorePart, "test": StorePart}, class_names)``, ready for
:func:`fastlt.data.store.write_native_store`. Readers never write anything, so a bad source
fails before a store is started.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fastlt.data.store import StorePart
from fastlt.errors import FastltError
from fastlt.files import file_digest, new_temporary

CIFAR_SIDE = 32
CIFAR_PIXELS = 3 * CIFAR_SIDE * CIFAR_SIDE

# Folder inside the tarball, pickle members of each part, the label key, the class-name member and key.
CIFAR_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "parts": {"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]},
        "label_key": "labels",
        "meta": ("batches.meta", "label_names"),
        "num_classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "parts": {"train": ["train"], "test": ["test"]},
        "label_key": "fine_labels",
        "meta": ("meta", "fine_label_names"),
        "num_classes": 100,
    },
}

CIFAR_DOWNLOADS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batch dicts but refuses any global other than numpy array reconstruction.

    A pickle can run arbitrary code; a tarball from a mirror or a colleague should not be
    able to, so only the handful of callables numpy arrays (and Python 3 bytes) need are allowed.
    """

    ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        # Pickles written by numpy < 2 (the official ones) name numpy.core, which numpy 2 calls numpy._core.
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(payload: bytes) -> dict[str, object]:
    """A CIFAR pickle as a dict with str keys (the originals were written by Python 2, so keys are bytes)."""
    loaded = _ArrayOnlyUnpickler(io.BytesIO(payload), encoding="bytes").load()
    if not isinstance(loaded, dict):
        raise ValueError(f"expected a dict, found {type(loaded).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in loaded.items()}


def _read_members(source: Path, folder: str, files: list[str]) -> dict[str, bytes]:
    """The bytes of ``files`` in the CIFAR ``folder``, from a tarball or an extracted copy.

    An extracted copy may be given as the CIFAR folder itself or as the folder holding it.
    """
    if source.is_dir():
        base = source / folder if (source / folder).is_dir() else source
        found = {}
        for name in files:
            if not (base / name).is_file():
                raise FastltError(f"{source}: missing {name} (not an extracted CIFAR python folder?)")
            found[name] = (base / name).read_bytes()
        return found
    wanted = {f"{folder}/{name}": name for name in files}
    try:
        with tarfile.open(source, mode="r:*") as archive:
            found = {}
            for member in archive:
                name = wanted.get(member.name.removeprefix("./"))
                if name is not None and member.isfile():
                    found[name] = archive.extractfile(member).read()
    except tarfile.ReadError:
        raise FastltError(f"{source}: not a tar archive (plain, gzip, bz2 or xz), or a damaged one") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise FastltError(f"{source}: not a readable CIFAR tarball ({_one_line(exc)})") from None
    missing = [name for name in files if name not in found]
    if missing:
        raise FastltError(f"{source}: missing member {folder}/{missing[0]} (not the CIFAR python tarball?)")
    return found


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _decode_part(source: Path, member: str, payload: bytes, label_key: str, num_classes: int) -> StorePart:
    """One CIFAR batch as NHWC uint8 images (the rows are R, G, B planes of 32x32) and int64 labels."""
    try:
        batch = _unpickle(payload)
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean the same to the user
        raise FastltError(f"{source}: {member} is not a readable CIFAR pickle ({_one_line(exc)})") from None
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_PIXELS:
        shape = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise FastltError(f"{source}: {member} 'data' must be uint8 [N,{CIFAR_PIXELS}], found {shape}")
    if labels is None:
        raise FastltError(f"{source}: {member} has no {label_key!r}")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        found = f"{labels.dtype} {list(labels.shape)}"
        raise FastltError(f"{source}: {member} {label_key!r} must be {data.shape[0]} integers, found {found}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise FastltError(f"{source}: {member} {label_key!r} outside [0, {num_classes})")
    images = data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return StorePart(images=np.ascontiguousarray(images), labels=labels.astype(np.int64))


def read_cifar(source: Path, variant: str) -> tuple[dict[str, StorePart], list[str]]:
    """Read the official CIFAR-10/100 python tarball (or its extracted folder) into train and test parts.

    The train part keeps the python-pickle order (CIFAR-10: data_batch_1..5 concatenated),
    which is the order every published split index file refers to.
    """
    if variant not in CIFAR_LAYOUT:
        raise FastltError(f"data set {variant!r}: expected one of {', '.join(CIFAR_LAYOUT)}")
    layout = CIFAR_LAYOUT[variant]
    source = Path(source)
    if not source.exists():
        raise FastltError(f"{source}: no such file or folder")
    folder = layout["folder"]
    meta_member, names_key = layout["meta"]
    members = [name for files in layout["parts"].values() for name in files]
    payloads = _read_members(source, folder, [meta_member, *members])
    try:
        meta = _unpickle(payloads[meta_member])
        raw_names = meta[names_key]
        class_names = [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in raw_names]
    except Exception as exc:
        raise FastltError(f"{source}: {meta_member} has no readable {names_key!r} ({_one_line(exc)})") from None
    if len(class_names) != layout["num_classes"]:
        raise FastltError(f"{source}: {meta_member} lists {len(class_names)} classes, expected {layout['num_classes']}")
    parts = {}
    for part_name, files in layout["parts"].items():
        batches = [
            _decode_part(source, name, payloads[name], layout["label_key"], layout["num_classes"])
            for name in files
        ]
        parts[part_name] = StorePart(
            images=np.concatenate([batch.images for batch in batches]),
            labels=np.concatenate([batch.labels for batch in batches]),
        )
    return parts, class_names


def download_cifar(variant: str, dest_dir: Path, url: str | None = None, md5: str | None = None) -> Path:
    """Download the official CIFAR tarball into ``dest_dir`` and return its path.

    The bytes go to a hidden temporary file and are renamed to the tarball's name only when
    their MD5 matches, so a cut connection or a wrong mirror never leaves a file that looks
    finished. A tarball already there with the right MD5 is reused. ``url``/``md5`` replace
    the official ones (mirrors; tests use a file:// URL).
    """
    if variant not in CIFAR_DOWNLOADS:
        raise FastltError(f"data set {variant!r}: expected one of {', '.join(CIFAR_DOWNLOADS)}")
    official_url, official_md5 = CIFAR_DOWNLOADS[variant]
    url = url or official_url
    md5 = (md5 or official_md5).lower()
    dest_dir = Path(dest_dir)
    target = dest_dir / official_url.rsplit("/", 1)[1]
    if target.exists():
        if file_digest(target, "md5") == md5:
            return target
        raise FastltError(f"{target}: exists but its MD5 is not {md5} (remove it to download again)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    handle = new_temporary(target)
    partial = Path(handle.name)
    try:
        digest = hashlib.md5()
        with handle, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=None) as progress:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    handle.write(chunk)
                    digest.update(chunk)
                    progress.update(len(chunk))
            handle.flush()
            os.fsync(handle.fileno())
        if digest.hexdigest() != md5:
            raise FastltError(f"{url}: downloaded file has MD5 {digest.hexdigest()}, expected {md5}")
        os.replace(partial, target)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FastltError(f"{url}: download failed ({_one_line(exc)})") from None
    finally:
        partial.unlink(missing_ok=True)
    return target


DIGITS_SIDE = 24  # the 8x8 digit is upscaled to this
DIGITS_CANVAS = 32
DIGITS_OFFSET = (DIGITS_CANVAS - DIGITS_SIDE) // 2  # fixed top-left corner of the digit: centred
DIGITS_TRAIN_FRACTION = 2 / 3


def make_coloured_digits(seed: int = 0) -> tuple[dict[str, StorePart], list[str]]:
    """scikit-learn's handwritten digits as a small, harder colour data set (no download needed).

    Why: a built-in data set lets the demo and tests run end to end offline, and the random
    colours make colour augmentation matter (raw pixels are a poor feature, as on CIFAR).

    Recipe (deterministic from ``seed``):
    1. ``sklearn.datasets.load_digits()``: 1,797 grey 8x8 images, intensities 0..16, classes 0..9.
    2. Each is upscaled to 24x24 with bilinear interpolation (``torch.nn.functional.interpolate``,
       ``align_corners=False``) and placed at rows/cols 4..27 of a 32x32 canvas; the rest of the
       canvas has intensity 0. ``t = intensity / 16`` in [0, 1].
    3. ``rng = numpy.random.default_rng(seed)``; ``fg = rng.integers(0, 256, (N, 3))`` then
       ``bg = rng.integers(0, 256, (N, 3))``: one uniform random RGB foreground and background
       colour per image. Pixel = ``round(bg * (1 - t) + fg * t)`` as uint8.
    4. Stratified split with the same ``rng``: for each class in order 0..9, its indices
       (ascending) are permuted by ``rng.permutation`` and the first ``round(2/3 * n_class)``
       go to train, the rest to test. Each part keeps the original sklearn order.
    Class names are "0".."9".
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = torch.from_numpy(digits.images.astype(np.float32))[:, None]
    upscaled = F.interpolate(grey, size=(DIGITS_SIDE, DIGITS_SIDE), mode="bilinear", align_corners=False)[:, 0]
    intensity = np.zeros((len(grey), DIGITS_CANVAS, DIGITS_CANVAS), dtype=np.float32)
    window = slice(DIGITS_OFFSET, DIGITS_OFFSET + DIGITS_SIDE)
    intensity[:, window, window] = upscaled.numpy() / 16.0
    rng = np.random.default_rng(seed)
    foreground = rng.integers(0, 256, size=(len(grey), 3)).astype(np.float32)
    background = rng.integers(0, 256, size=(len(grey), 3)).astype(np.float32)
    t = intensity[..., None]
    images = np.rint(background[:, None, None] * (1 - t) + foreground[:, None, None] * t)
    images = np.clip(images, 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    in_train = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        in_train[members[: round(DIGITS_TRAIN_FRACTION * len(members))]] = True
    parts = {
        "train": StorePart(images=images[in_train], labels=labels[in_train]),
        "test": StorePart(images=images[~in_train], labels=labels[~in_train]),
    }
    return parts, [str(digit) for digit in range(10)]
