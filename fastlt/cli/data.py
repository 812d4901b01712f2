"""Data commands: `fastlt convert` turns a raw data set into a store, `fastlt splits` writes long-tailed
split index files from a store's labels.

Each command imports the data code inside itself, so that `fastlt --help` answers without loading torch.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from fastlt.cli.shared import overwrite_option, positive_ints, user_errors
from fastlt.errors import FastltError


def named_list(text: str) -> tuple[str, Path]:
    """--list NAME=FILE."""
    name, sep, file = text.partition("=")
    if not sep or not name.isidentifier() or not file:
        raise click.BadParameter(f"expected NAME=FILE (a list name such as lt or test, then a list file), got {text!r}")
    return name, Path(file)


@click.command()
@click.argument("dataset", type=click.Choice(["cifar10", "cifar100", "digits", "imagenet100-lt", "folder"]))
@click.option("--source", type=click.Path(path_type=Path), help="CIFAR python tarball or its extracted folder.")
@click.option("--download", is_flag=True, help="Download the official CIFAR tarball (checksummed) first.")
@click.option("--root", type=click.Path(path_type=Path),
              help="Image folder: ILSVRC root (with train/ and val/) or a class-per-subfolder data set.")
@click.option("--list", "lists", multiple=True, callback=lambda ctx, param, value: [named_list(v) for v in value],
              help="NAME=FILE, a list of '<relative path> <label>' lines (imagenet100-lt: replaces the published "
                   "lists; repeat for several; 'test' is the test part, every other list an index list "
                   "lists/NAME.npy into the train part, which holds the images of them all).")
@click.option("--full-train", is_flag=True,
              help="imagenet100-lt: add list full, every train image of the 100 classes (rebuilt).")
@click.option("--test-root", type=click.Path(path_type=Path), help="folder: a class-per-subfolder test set (part test).")
@click.option("--lt-ratio", type=click.FloatRange(0, 1, min_open=True),
              help="folder: subsample the classes to a long tail, smallest / largest class.")
@click.option("--lt-profile", type=click.Choice(["exp", "step"]), default="exp", show_default=True,
              help="folder: exponential or two-step long tail.")
@click.option("--size", type=click.IntRange(min=8), default=256, show_default=True,
              help="Image stores: side of the stored square (shorter side resized, centre square kept).")
@click.option("--workers", type=click.IntRange(min=1), help="Decoding processes (default: the usable cores).")
@click.option("--skip-bad", is_flag=True, help="Leave unreadable images out (listed in meta.json) instead of stopping.")
@click.option("--format", "backend", type=click.Choice(["native", "ffcv", "dali"]), default="native",
              show_default=True, help="Where the images go: .npy arrays, FFCV .beton files or JPEGs for DALI.")
@click.option("--image-format", type=click.Choice(["jpg", "raw"]), default="jpg", show_default=True,
              help="--format ffcv: images as JPEG or raw pixels.")
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True,
              help="--format ffcv/dali: JPEG quality.")
@click.option("--verify", is_flag=True, help="Re-read the written store and check its counts and checksums.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the store.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the coloured digits, and of the folder long-tail subsampling.")
@overwrite_option("an existing store (the new one is built fully first)")
@user_errors
def convert(dataset: str, source: Path | None, download: bool, root: Path | None, lists: list[tuple[str, Path]],
            full_train: bool, test_root: Path | None, lt_ratio: float | None, lt_profile: str, size: int,
            workers: int | None, skip_bad: bool, backend: str, image_format: str, quality: int, verify: bool,
            out: Path, seed: int, overwrite: bool) -> None:
    """Turn a raw data set into a store: uint8 images (native arrays, FFCV or DALI files), labels, meta.json."""
    from fastlt.data.sources import download_cifar, make_coloured_digits, read_cifar
    from fastlt.data.store import Store, write_native_store

    workers = workers or len(os.sched_getaffinity(0))
    encode = {"image_format": image_format, "quality": quality, "workers": workers}
    image_options = {"--root": root, "--list": lists, "--full-train": full_train, "--test-root": test_root,
                     "--lt-ratio": lt_ratio, "--skip-bad": skip_bad}
    if dataset in ("imagenet100-lt", "folder"):
        if source or download:
            raise FastltError(f"convert {dataset}: reads --root; --source/--download are for CIFAR")
        path = convert_image_dataset(dataset, root, dict(lists), full_train, test_root, lt_ratio, lt_profile, size,
                                     workers, skip_bad, out, seed, overwrite, backend, encode)
    else:
        given = [name for name, value in image_options.items() if value]
        if given:
            raise FastltError(f"convert {dataset}: {', '.join(given)} apply to imagenet100-lt and folder only")
        if dataset == "digits":
            if source or download:
                raise FastltError("convert digits: the digits ship with scikit-learn; --source/--download do not apply")
            parts, class_names = make_coloured_digits(seed)
            origin = {"dataset": "coloured-digits", "seed": seed}
        else:
            if bool(source) == download:
                raise FastltError(f"convert {dataset}: give exactly one of --source PATH or --download")
            if download:
                source = download_cifar(dataset, out.parent / "downloads")
            parts, class_names = read_cifar(source, dataset)
            origin = {"dataset": dataset, "source": str(source)}
        path = write_native_store(out, dataset, class_names, parts, origin, overwrite, backend, encode)
    store = Store.open(path)
    if verify:
        for part in store.parts:
            store.part(part, verify=True)  # re-hashes every file against meta.json, checks shapes and counts
    counts = ", ".join(f"{name} {store.meta['parts'][name]['count']}" for name in store.parts)
    skipped = sum(len(part["skipped"]) for part in store.meta["source"].get("parts", {}).values())
    left_out = f"; {skipped} unreadable image{'s' * (skipped != 1)} left out, listed in meta.json" if skipped else ""
    click.echo(f"wrote {path} ({store.backend}: {counts}{left_out}){' - verified' if verify else ''}")


def convert_image_dataset(dataset: str, root: Path | None, lists: dict[str, Path], full_train: bool,
                          test_root: Path | None, lt_ratio: float | None, lt_profile: str, size: int,
                          workers: int, skip_bad: bool, out: Path, seed: int, overwrite: bool, backend: str,
                          encode: dict[str, Any]) -> Path:
    """`convert imagenet100-lt` (published or given lists) and `convert folder` (class per subfolder)."""
    from fastlt.data.images import (
        IMAGENET100_LISTS, TEST_LIST, convert_images, folder_images, image_lists, list_sources, rebuilt_full_train,
        subsample_long_tail, union_of_lists,
    )
    from fastlt.shipped import shipped_folder

    if root is None:
        raise FastltError(f"convert {dataset}: --root is required")
    if not root.is_dir():
        raise FastltError(f"{root}: no such folder")
    source: dict[str, Any] = {"dataset": dataset, "root": str(root)}
    index_lists: dict[str, tuple[str, Any]] = {}
    if dataset == "imagenet100-lt":
        for option, value in (("--test-root", test_root), ("--lt-ratio", lt_ratio)):
            if value:
                raise FastltError(f"convert imagenet100-lt: {option} applies to folder only")
        if not lists:
            published = shipped_folder("splits") / "published" / "sdclr" / "imagenet-100"
            lists = {part: published / file for part, file in IMAGENET100_LISTS.items()}
        read, class_names = image_lists(root, lists)
        source["lists"] = list_sources(lists)
        if full_train:
            read["full"] = rebuilt_full_train(root, class_names)
            source["lists"]["full"] = {"rebuilt": "every image of root/train/<class>/ for the listed classes"}
        test = read.pop(TEST_LIST, None)
        if not read:
            raise FastltError("convert imagenet100-lt: no training list (every --list is the test list)")
        parts = {"train": union_of_lists(read, {**lists, "full": root / "train"})}
        index_lists = {name: ("train", images) for name, images in read.items()}
        if test is not None:
            parts["test"] = test
    else:
        for option, value in (("--list", lists), ("--full-train", full_train)):
            if value:
                raise FastltError(f"convert folder: {option} applies to imagenet100-lt only")
        train = folder_images(root)
        if lt_ratio is not None:
            train = subsample_long_tail(train, lt_ratio, lt_profile, seed)
            source["long_tail"] = {"ratio": lt_ratio, "profile": lt_profile, "seed": seed}
        parts = {"train": train}
        if test_root is not None:
            test = folder_images(test_root)
            if test.class_names != train.class_names:
                raise FastltError(f"{test_root}: its class folders differ from those of {root}")
            parts["test"] = test
            source["test_root"] = str(test_root)
    path, _ = convert_images(out, dataset, parts, size, workers, skip_bad, source, overwrite, convert_progress,
                             backend, encode, index_lists)
    return path


def convert_progress(part: str) -> Callable[[int, int], None]:
    """A progress line on stderr for one part: rewritten about every percent on a terminal, once at the end
    in a log."""
    live = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        if done == total:
            click.echo(f"\r  {part}: {done:,} / {total:,} images", err=True)
        elif live and done % max(1, total // 100) == 0:
            click.echo(f"\r  {part}: {done:,} / {total:,} images", err=True, nl=False)
    return show


@click.group()
def splits() -> None:
    """Generate long-tailed split index files."""


@splits.command("cifar")
@click.argument("dataset", type=click.Choice(["cifar10", "cifar100"]))
@click.option("--store", "store_path", type=click.Path(path_type=Path), required=True,
              help="Native CIFAR store whose train labels define the classes.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the split files.")
@click.option("--split-ids", type=positive_ints(), default="1,2,3,4,5", show_default=True,
              help="Comma-separated split numbers.")
@click.option("--val-list", type=click.Path(path_type=Path), help="Use this val index file (e.g. SDCLR's) as the held-out set.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@overwrite_option("split files of the same names in --out")
@user_errors
def splits_cifar(dataset: str, store_path: Path, out: Path, split_ids: tuple[int, ...], val_list: Path | None,
                 seed: int, overwrite: bool) -> None:
    """CIFAR-10-LT / CIFAR-100-LT with the SDCLR profile and pool rules (D_i, D_b, S_b, eval lists)."""
    from fastlt.data.splits import load_split, write_cifar_lt_splits
    from fastlt.data.store import Store

    if not split_ids:
        raise FastltError("--split-ids: give at least one split number")
    labels = Store.open(store_path, expect=dataset).part("train").labels
    val = load_split(val_list, len(labels)) if val_list else None
    for path in write_cifar_lt_splits(dataset, labels, out, split_ids, val_list=val, seed=seed, overwrite=overwrite):
        click.echo(f"wrote {path}")


@splits.command("digits")
@click.option("--store", "store_path", type=click.Path(path_type=Path), required=True, help="Native digits store.")
@click.option("--ratio", type=click.FloatRange(min=1.0), default=10.0, show_default=True,
              help="Largest / smallest class count.")
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output .npy (a .json manifest goes beside it).")
@overwrite_option("an existing --out file and its .json")
@user_errors
def splits_digits(store_path: Path, ratio: float, seed: int, out: Path, overwrite: bool) -> None:
    """A long-tailed split of the digits train part with any imbalance ratio."""
    from fastlt.data.splits import write_digits_lt_split
    from fastlt.data.store import Store

    labels = Store.open(store_path, expect="digits").part("train").labels
    click.echo(f"wrote {write_digits_lt_split(labels, ratio, seed, out, overwrite)}")
