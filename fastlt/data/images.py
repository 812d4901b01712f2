"""Image files into native stores: SDCLR list files, class-per-folder data sets, parallel decoding.

ImageNet-sized images are stored at one fixed square size (``STORED_SIZE``, 256 by default):
the shorter side is resized to it (bicubic, antialiased, as PIL does) and the centre square
is kept. 256 is what the ImageNet protocols evaluate from (resize 256, centre crop 224), so
the test view is exact; the training views (RandomResizedCrop to 224) come from that centre
square, which drops the ends of the longer side (12.5 % on each side of a 4:3 image). A fixed
shape is what lets the whole split live on the device as one uint8 tensor.

Decoding runs in a pool of worker processes; the rows are written in list order into a
memory-mapped part of a ``StoreWriter``, so a part larger than memory converts. An image
that cannot be read stops the conversion with its path, or with ``skip_bad`` is left out and
recorded (path and reason) in the store's manifest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fastlt.data.store import StoreWriter
from fastlt.data.workers import ordered_map
from fastlt.errors import FastltError
from fastlt.files import file_digest

STORED_SIZE = 256
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LT_PROFILES = ("exp", "step")


@dataclass(frozen=True)
class ImageList:
    """Image paths relative to a root folder, their labels, and the class names labels index."""

    root: Path
    paths: list[str]
    labels: np.ndarray  # [N] int64
    class_names: list[str]


def read_list_file(path: Path) -> tuple[list[str], np.ndarray]:
    """SDCLR's list format, one ``<relative path> <label>`` per line; errors name the file and line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise FastltError(f"{path}: cannot read the list file ({error})") from None
    paths, labels = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise FastltError(f"{path} line {number}: expected '<relative path> <label>', got {line.strip()!r}")
        paths.append(fields[0])
        labels.append(int(fields[1]))
    if not paths:
        raise FastltError(f"{path}: the list file names no images")
    if len(set(paths)) != len(paths):
        raise FastltError(f"{path}: lists an image more than once")
    return paths, np.asarray(labels, dtype=np.int64)


def class_names_from_paths(paths: list[str], labels: np.ndarray, where: str) -> dict[int, str]:
    """Label -> the folder its images lie in (ImageNet's synset), refusing a label found in two folders."""
    names: dict[int, str] = {}
    for path, label in zip(paths, labels.tolist()):
        folder = Path(path).parent.name
        if names.setdefault(label, folder) != folder:
            raise FastltError(f"{where}: label {label} names images in both {names[label]!r} and {folder!r}")
    return names


def folder_images(root: Path) -> ImageList:
    """Every image of a class-per-subfolder data set; classes in sorted folder order, images sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FastltError(f"{root}: no such folder")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise FastltError(f"{root}: no class subfolders")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f.name for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FastltError(f"{root / name}: a class folder without images ({', '.join(IMAGE_SUFFIXES)})")
        paths += [f"{name}/{file}" for file in files]
        labels += [label] * len(files)
    return ImageList(root, paths, np.asarray(labels, dtype=np.int64), classes)


def long_tail_counts(largest: int, num_classes: int, ratio: float, profile: str) -> list[int]:
    """Images kept per class: "exp" n_max * ratio^(k / (K - 1)) (Cao et al., as CIFAR-LT), "step" n_max for
    the first half of the classes and n_max * ratio for the rest; ratio = n_min / n_max in (0, 1]."""
    if not 0 < ratio <= 1:
        raise FastltError(f"long-tail ratio {ratio}: must be in (0, 1] (smallest class / largest class)")
    if profile not in LT_PROFILES:
        raise FastltError(f"long-tail profile {profile!r}: expected one of {LT_PROFILES}")
    if profile == "exp":
        exponents = [k / max(num_classes - 1, 1) for k in range(num_classes)]
        return [max(1, int(largest * ratio ** e)) for e in exponents]
    return [largest if k < num_classes // 2 else max(1, int(largest * ratio)) for k in range(num_classes)]


def subsample_long_tail(images: ImageList, ratio: float, profile: str, seed: int) -> ImageList:
    """Keep a seeded random subset of each class, class k getting ``long_tail_counts``' k-th count
    (capped at what the class has); class order is the folder order."""
    counts = np.bincount(images.labels, minlength=len(images.class_names))
    wanted = long_tail_counts(int(counts.max()), len(counts), ratio, profile)
    rng = np.random.default_rng(seed)
    keep = np.concatenate([np.sort(rng.permutation(np.flatnonzero(images.labels == label))[:min(n, counts[label])])
                           for label, n in enumerate(wanted)])
    return ImageList(images.root, [images.paths[i] for i in keep], images.labels[keep], images.class_names)


def decode_square(path: Path, size: int) -> np.ndarray:
    """[size, size, 3] uint8: RGB, shorter side resized to ``size`` (PIL bicubic, antialiased), centre square,
    with torchvision's ``Resize(size)`` + ``CenterCrop(size)`` rounding, so the pixels are theirs."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        short, long = sorted((width, height))
        long = int(size * long / short)  # truncated, as torchvision's Resize(size) computes it
        resized = (size, long) if width <= height else (long, size)
        image = image.resize(resized, Image.BICUBIC)
        left, top = (int(round((extent - size) / 2.0)) for extent in resized)  # torchvision's CenterCrop offsets
        return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _decode_task(task: tuple[int, str, int]) -> tuple[int, np.ndarray | None, str]:
    """(row, pixels or None, why not): runs in a worker process; never raises for a bad image."""
    row, path, size = task
    try:
        return row, decode_square(Path(path), size), ""
    except Exception as error:  # noqa: BLE001 - PIL raises many types for damaged files
        text = str(error).strip().splitlines()
        return row, None, f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


Progress = Callable[[int, int], None]


def convert_part(writer: StoreWriter, part: str, images: ImageList, size: int, workers: int, skip_bad: bool,
                 progress: Progress | None = None) -> dict:
    """Decode ``images`` into the writer's part ``part``; returns its manifest entry.

    Missing files are refused before any decoding. Rows keep list order; with ``skip_bad``,
    unreadable images are dropped and listed in the manifest, otherwise the first one stops
    the conversion (the writer then leaves nothing behind).
    """
    root = images.root
    missing = [path for path in images.paths if not (root / path).is_file()]
    if missing:
        raise FastltError(f"{root / missing[0]}: listed for part {part!r} but not found "
                          f"({len(missing)} of {len(images.paths)} listed images are missing)")
    count = len(images.paths)
    pixels, labels = writer.new_part(part, count, size, size)
    tasks = [(row, str(root / path), size) for row, path in enumerate(images.paths)]
    kept, bad = 0, []
    chunk = max(1, min(64, count // (8 * workers)))  # rows per task: few round trips, still balanced
    with ordered_map(workers) as mapped:
        for done, (row, image, why) in enumerate(mapped(_decode_task, tasks, chunk), 1):
            if image is None:
                if not skip_bad:
                    raise FastltError(f"{root / images.paths[row]}: cannot decode ({why}); "
                                      "pass --skip-bad to leave unreadable images out")
                bad.append({"path": images.paths[row], "reason": why})
            else:
                pixels[kept], labels[kept] = image, images.labels[row]
                kept += 1
            if progress is not None:
                progress(done, count)
    if kept == 0:
        raise FastltError(f"part {part!r}: none of its {count} images could be read")
    writer.keep_rows(part, kept)
    return {"images": kept, "listed": count, "skipped": bad}


# The published ImageNet-100-LT lists (splits/published/sdclr/imagenet-100). The test list becomes the
# store's test part; the others index one train part that holds each of their images once.
IMAGENET100_LISTS = {
    "lt": "imageNet_100_LT_train.txt",  # the long-tailed pretraining set, 1,280 down to 6 per class
    "balanced": "imageNet_100_BL_train.txt",  # its balanced counterpart, 122 per class
    "fewshot": "imageNet_100_sub_balance_train_0.01.txt",  # few-shot linear evaluation, 12 per class
    "val": "ImageNet_100_val.txt",  # 20 per class, from ILSVRC train images
    "test": "ImageNet_100_test.txt",  # 50 per class, the ILSVRC validation images
}
TEST_LIST = "test"


def image_lists(root: Path, lists: dict[str, Path]) -> tuple[dict[str, ImageList], list[str]]:
    """Read list files (part -> file) of images under ``root``, with one label -> class-folder mapping
    over all of them."""
    read = {part: read_list_file(path) for part, path in lists.items()}
    names: dict[int, str] = {}
    for part, (paths, labels) in read.items():
        for label, name in class_names_from_paths(paths, labels, str(lists[part])).items():
            if names.setdefault(label, name) != name:
                raise FastltError(f"{lists[part]}: label {label} is {name!r} here but {names[label]!r} in another list")
    if sorted(names) != list(range(len(names))):
        raise FastltError(f"{', '.join(map(str, lists.values()))}: labels must be 0..K-1 with every class listed")
    class_names = [names[label] for label in range(len(names))]
    first_label = {}
    for label, name in enumerate(class_names):
        if first_label.setdefault(name, label) != label:
            raise FastltError(f"{', '.join(map(str, lists.values()))}: labels {first_label[name]} and {label} both "
                              f"name the class folder {name!r}")
    return {part: ImageList(Path(root), paths, labels, class_names) for part, (paths, labels) in read.items()}, \
        class_names


def union_of_lists(lists: dict[str, ImageList], files: dict[str, Path]) -> ImageList:
    """Every image of the lists once, sorted by path; an image two lists label differently is refused."""
    label_of: dict[str, int] = {}
    first_in: dict[str, str] = {}
    for name, images in lists.items():
        for path, label in zip(images.paths, images.labels.tolist()):
            if label_of.setdefault(path, label) != label:
                raise FastltError(f"{files[name]}: {path} has label {label}, but {label_of[path]} in "
                                  f"{files[first_in[path]]}")
            first_in.setdefault(path, name)
    paths = sorted(label_of)
    some = next(iter(lists.values()))
    return ImageList(some.root, paths, np.asarray([label_of[path] for path in paths], dtype=np.int64),
                     some.class_names)


def rows_in_part(part: ImageList, skipped: list[dict], images: ImageList) -> np.ndarray:
    """Rows of ``images`` in the written ``part`` (which left the ``skipped`` ones out), in list order;
    a skipped image is dropped from the list too."""
    left_out = {entry["path"] for entry in skipped}
    row_of = {path: row for row, path in enumerate(p for p in part.paths if p not in left_out)}
    return np.asarray([row_of[path] for path in images.paths if path in row_of], dtype=np.int64)


def rebuilt_full_train(root: Path, class_names: list[str]) -> ImageList:
    """Every ILSVRC train image of the listed classes (``root/train/<synset>/*``): the full-shot balanced set,
    which the published files do not list and fastlt rebuilds."""
    paths, labels = [], []
    for label, synset in enumerate(class_names):
        folder = Path(root) / "train" / synset
        if not folder.is_dir():
            raise FastltError(f"{folder}: missing (the full train set is rebuilt from root/train/<class>/)")
        files = sorted(f.name for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        paths += [f"train/{synset}/{file}" for file in files]
        labels += [label] * len(files)
    return ImageList(Path(root), paths, np.asarray(labels, dtype=np.int64), class_names)


def convert_images(out: Path, name: str, parts: dict[str, ImageList], size: int, workers: int,
                   skip_bad: bool, source: dict, overwrite: bool = False,
                   progress: Callable[[str], Progress] | None = None, backend: str = "native",
                   encode: dict | None = None,
                   lists: dict[str, tuple[str, ImageList]] | None = None) -> tuple[Path, dict]:
    """Write a store with one part per image list, and ``lists`` (name -> (part, images)) as index lists
    into those parts; returns its path and the per-part manifest (also stored in meta.json's
    ``source.parts``). FFCV and DALI stores encode the same decoded pixels."""
    if size < 8:
        raise FastltError(f"--size {size}: must be at least 8 pixels")
    class_names = next(iter(parts.values())).class_names
    manifest: dict[str, dict] = {}
    writer = StoreWriter(out, name, class_names, source, overwrite, backend, encode)
    with writer:
        for part, images in parts.items():
            manifest[part] = convert_part(writer, part, images, size, workers, skip_bad,
                                          progress(part) if progress else None)
        for list_name, (part, images) in (lists or {}).items():
            rows = rows_in_part(parts[part], manifest[part]["skipped"], images)
            writer.add_list(list_name, part, rows, {"listed": len(images.paths),
                                                    "left_out": len(images.paths) - len(rows)})
        writer.source = {**source, "stored_size": size, "resize": "shorter side to size, bicubic; centre square",
                         "parts": manifest}
        return writer.commit(), manifest


def list_sources(lists: dict[str, Path]) -> dict[str, dict]:
    """Each part's list file and its checksum, for the store's provenance."""
    return {part: {"list": str(path), "sha256": file_digest(Path(path))} for part, path in lists.items()}
