"""The fastlt command line: convert, splits, pretrain, recipe, reproduce, linear-eval, compare, plot, export,
bench, info.

Every command turns a FastltError into ``error: <one line>`` on stderr and exit status 1,
and a malformed command line into one such line and exit status 2.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from fastlt.choices import EVAL_EXITS, PROTOCOL_CHOICES
from fastlt.errors import FastltError, RunStopped, SecondSignal
from fastlt.files import check_free


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Report FastltError as one line and exit 1, and a run a signal stopped (its checkpoint saved, or a
    second signal that ended it at once) as one line and exit 128 + the signal, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FastltError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
        except (RunStopped, SecondSignal) as stop:
            if speaks_for_the_run():
                click.echo(str(stop), err=True)
            sys.exit(128 + stop.signum)

    return wrapper


def speaks_for_the_run() -> bool:
    """Whether this process prints a run's stop line: rank 0 under torchrun (every rank stops), else itself."""
    from fastlt.train.distributed import launched_ranks

    try:
        return launched_ranks().main
    except FastltError:
        return True


class CommaList(click.ParamType):
    """Comma-separated items, each kept if ``accept(item)``; an empty string is the empty list unless
    ``allow_empty`` is false. Items are returned as ``convert_item(item)``, repeats dropped."""

    name = "list"

    def __init__(self, accept: Callable[[str], bool], convert_item: Callable[[str], Any], expected: str,
                 allow_empty: bool = True):
        self.accept, self.convert_item, self.expected, self.allow_empty = accept, convert_item, expected, allow_empty

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[Any, ...]:
        if isinstance(value, tuple):
            return value
        items = [item.strip() for item in str(value).split(",") if item.strip()]
        if (not items and not self.allow_empty) or not all(self.accept(item) for item in items):
            self.fail(f"{value!r}: expected {self.expected}", param, ctx)
        return tuple(dict.fromkeys(self.convert_item(item) for item in items))


def positive_ints() -> CommaList:
    """Integers >= 1, e.g. "1,10"."""
    return CommaList(lambda item: item.isdigit() and int(item) >= 1, int,
                     "comma-separated integers >= 1, e.g. 1,10")


def shot_settings() -> CommaList:
    """Shot settings: "full" (the probe list) and/or numbers of shots, e.g. "full,100,50"."""
    return CommaList(lambda item: item == "full" or (item.isdigit() and int(item) >= 1), str,
                     "'full' and/or numbers of shots, e.g. full,100,50", allow_empty=False)


class DeviceName(click.ParamType):
    """auto, cpu, cuda or cuda:N; anything else is a usage error. Whether CUDA is there is checked where the
    command resolves the device (fastlt.train.device.resolve_device), as an error naming ``--device``."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        kind, colon, index = str(value).partition(":")
        if (kind in ("auto", "cpu", "cuda") and not colon) or (kind == "cuda" and index.isdigit()):
            return str(value)
        self.fail(f"{value!r}: expected auto, cpu, cuda or cuda:N", param, ctx)


def check_device_option(device: str | None) -> None:
    """Refuse an unavailable ``--device`` in one line naming it, before a command that passes it on as
    train.device does any work."""
    if device is not None:
        from fastlt.train.device import resolve_device

        resolve_device(device, f"--device {device}")


DEVICE_HELP = "auto (the first CUDA device, else the CPU), cpu, cuda or cuda:N."
PRECISION_CHOICES = "auto (bf16 where the device runs it natively, else fp16 on CUDA, else fp32), bf16, fp16 or fp32."
PRECISION_HELP = PRECISION_CHOICES + " fp16 training scales the loss."


def overwrite_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--overwrite, alike on every command that writes a path the user named: without it, an existing one is
    refused before any work (fastlt.files.check_free)."""
    return click.option("--overwrite", is_flag=True, help=f"Replace {what}; without it an existing one is refused.")


class OneLineErrors(click.Group):
    """Report a bad command line as one ``error:`` line too (click would print the usage first)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:  # a bare group: its help, as click would
            click.echo(error.format_message(), err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            click.echo(f"error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        if standalone_mode:
            sys.exit(result if isinstance(result, int) else 0)
        return result


@click.group(cls=OneLineErrors)
@click.version_option(package_name="fastlt")
def main() -> None:
    """Fast contrastive self-supervised learning on long-tailed image data."""


def named_list(text: str) -> tuple[str, Path]:
    """--list NAME=FILE."""
    name, sep, file = text.partition("=")
    if not sep or not name.isidentifier() or not file:
        raise click.BadParameter(f"expected NAME=FILE (a list name such as lt or test, then a list file), got {text!r}")
    return name, Path(file)


@main.command()
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
    import os
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


@main.group()
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


@main.command()
@click.argument("recipe", required=False)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a recipe value.")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue this run folder from its last checkpoint.")
@click.option("--resume-if-exists", is_flag=True,
              help="Continue the run named by train.name if it has a checkpoint, else start it (for launchers that "
                   "rerun the command: torchrun --max-restarts, a Slurm requeue).")
@click.option("--split", type=click.Path(path_type=Path),
              help="Pretrain on this split file (SDCLR format, e.g. a published one); same as --set data.split=FILE.")
@click.option("--device", type=DeviceName(), help=DEVICE_HELP + " Same as --set train.device=...")
@click.option("--precision", help=PRECISION_HELP + " Same as --set train.precision=...")
@click.option("--until-epoch", type=click.IntRange(min=1), help="Stop after this epoch (the schedule still spans train.epochs).")
@click.option("--list", "list_methods", is_flag=True, help="Print the method presets and the axes' choices, and exit.")
@user_errors
def pretrain(recipe: str | None, overrides: tuple[str, ...], resume: Path | None, resume_if_exists: bool,
             split: Path | None, device: str | None, precision: str | None, until_epoch: int | None,
             list_methods: bool) -> None:
    """Self-supervised pretraining from a TOML recipe or a shipped recipe's name (e.g. cifar100_lt/bcl-d).

    Progress goes to stderr; the run folder is printed last on stdout.
    """
    if list_methods:
        from fastlt.methods import INCOMPATIBLE, PRESETS, VIEW_FORWARD_CONFLICTS, axis_choices

        click.echo("presets (method.name), one choice per axis:")
        for name, axes in PRESETS.items():
            click.echo(f"  {name:10} " + ", ".join(f"{axis}={choice}" for axis, choice in vars(axes).items()))
        click.echo("axes (method.<axis> changes a preset's choice):")
        for axis, choices in axis_choices().items():
            click.echo(f"  {axis:21} {' | '.join(choices)}")
        click.echo("cannot be combined:")
        for axis_a, choice_a, axis_b, choice_b, why in INCOMPATIBLE:
            click.echo(f"  {axis_a}={choice_a} with {axis_b}={choice_b}: {why}")
        for (encoder, view_forward), why in VIEW_FORWARD_CONFLICTS.items():
            click.echo(f"  encoder={encoder} with view_forward={view_forward}: {why}")
        return
    from fastlt.recipe import find_recipe, load_recipe, option_overrides
    from fastlt.train.distributed import launched_ranks
    from fastlt.train.trainer import pretrain as run_pretraining
    from fastlt.train.trainer import pretrain_or_resume, resume_run

    check_device_option(device)
    shortcuts = {"--split": ("data.split", split and str(split.resolve())), "--device": ("train.device", device),
                 "--precision": ("train.precision", precision)}
    overrides = (*overrides, *option_overrides(shortcuts))
    if resume is not None:
        if recipe is not None:
            raise FastltError("pretrain: give a RECIPE or --resume RUN_DIR, not both")
        if resume_if_exists:
            raise FastltError("pretrain: --resume RUN_DIR or --resume-if-exists (with a RECIPE), not both")
        run_dir = resume_run(resume, overrides, until_epoch=until_epoch)
    else:
        if recipe is None:
            raise FastltError("pretrain: missing RECIPE (a TOML file, or a shipped name such as digits_lt/simclr)")
        path = find_recipe(recipe)
        if resume_if_exists:
            run_dir = pretrain_or_resume(load_recipe(path, overrides), str(path), overrides, until_epoch)
        else:
            run_dir = run_pretraining(load_recipe(path, overrides), str(path), until_epoch=until_epoch)
    if launched_ranks().main:  # under torchrun, one line from rank 0
        click.echo(str(run_dir))


@main.command()
@click.argument("table", type=click.Choice(["cifar100", "cifar10", "imagenet100", "digits"]))
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path),
              help="The converted data set (fastlt convert).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Runs go to OUT/<dataset>_lt/runs, the table to OUT/<dataset>_lt.md.")
@click.option("--splits", "split_ids", type=positive_ints(), default="1", show_default=True,
              help="Published splits to run, e.g. 1,2,3,4,5 (mean and std over them).")
@click.option("--epochs", type=click.IntRange(min=1), help="Pretraining epochs (default: the recipes', the papers').")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a value in every run's recipe.")
@click.option("--device", type=DeviceName(), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--precision", default="auto", show_default=True, help=PRECISION_HELP)
@user_errors
def reproduce(table: str, store_path: Path, out: Path, split_ids: tuple[int, ...], epochs: int | None,
              overrides: tuple[str, ...], device: str, precision: str) -> None:
    """Pretrain and evaluate the presets of a published table, and write our numbers beside the paper's.

    Stopped and run again, it resumes: finished runs and reports are kept.
    """
    from fastlt.reproduce import reproduce as run_reproduction

    click.echo(str(run_reproduction(table, store_path, out, split_ids, epochs, overrides, device, precision)))


@main.group("recipe")
def recipe_group() -> None:
    """Inspect recipes: the shipped ones, and every key with its value, its default and what it means."""


@recipe_group.command("show")
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a recipe value.")
@user_errors
def recipe_show(recipe: str, overrides: tuple[str, ...]) -> None:
    """Every key of RECIPE (a TOML file or a shipped name) with its resolved value, default and meaning.

    A '*' marks values that differ from the default.
    """
    from fastlt.recipe import find_recipe, load_recipe, recipe_keys

    path = find_recipe(recipe)
    keys = recipe_keys(load_recipe(path, overrides))
    click.echo(f"{path}")
    width = {column: max(len(json.dumps(getattr(k, column))) for k in keys) for column in ("value", "default")}
    key_width = max(len(k.key) for k in keys)
    for k in keys:
        mark = "*" if k.value != k.default else " "
        click.echo(f"{mark} {k.key:{key_width}}  {json.dumps(k.value):{width['value']}}  "
                   f"{json.dumps(k.default):{width['default']}}  {k.meaning}")


@recipe_group.command("list")
@user_errors
def recipe_list() -> None:
    """The shipped recipes by data set: each name, its method and its purpose (the recipe file's first comment line).

    Pretrain one with `fastlt pretrain DATASET/NAME`.
    """
    from fastlt.recipe import load_recipe, recipe_purpose, shipped_recipes

    rows: dict[str, list[tuple[str, str, str]]] = {}
    for name, path in shipped_recipes().items():
        data_set, recipe = name.split("/")
        rows.setdefault(data_set, []).append((recipe, load_recipe(path).method.name, recipe_purpose(path)))
    name_width = max(len(row[0]) for group in rows.values() for row in group)
    method_width = max(len(row[1]) for group in rows.values() for row in group)
    for data_set, group in rows.items():
        click.echo(data_set)
        for recipe, method, purpose in group:
            click.echo(f"  {recipe:{name_width}}  {method:{method_width}}  {purpose}".rstrip())


@recipe_group.command("keys")
def recipe_keys_table() -> None:
    """The Markdown table of every recipe key, its default and meaning (the README's)."""
    from fastlt.recipe import keys_markdown

    click.echo(keys_markdown())


@main.command("linear-eval")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Folder for the report folders (default: <run>/eval).")
@click.option("--store", "store_path", type=click.Path(path_type=Path),
              help="Use this store instead of the recipe's (it must hold the data the run trained on).")
@click.option("--probe-split", type=click.Path(path_type=Path),
              help="Indices of the probe's training samples (default: the recipe's eval.train_split).")
@click.option("--shots", type=shot_settings(), default="full", show_default=True,
              help="full (the probe list) and/or N-shot evaluations, each the mean and std over the recipe's "
                   "few-shot lists (eval.shot_lists), e.g. full,100,50.")
@click.option("--epochs", type=click.IntRange(min=1),
              help="BCL probe epochs (default: the recipe's, 500); fewer squeeze its lr decay, with a warning.")
@click.option("--sdclr-epochs", type=click.IntRange(min=1),
              help="SDCLR full-shot fc epochs (default: the recipe's, 30); fewer, with a warning.")
@click.option("--knn", type=positive_ints(), help="Comma-separated k values for kNN, e.g. 1,10; empty for none.")
@click.option("--random-init", is_flag=True, help="Also evaluate a randomly initialised backbone of the same architecture.")
@click.option("--protocol", type=click.Choice(PROTOCOL_CHOICES),
              help="bcl (default: the linear probe on cached features, with kNN), sdclr (the fc trained through the "
                   "frozen backbone on augmented images, best epoch on the held-out list), ts (kNN and LinearSVCs on "
                   "the long-tailed split), all (those three), supcon (SupCon's and SelfCon's linear classifiers on "
                   "augmented views), finetune (FlatCLR's: the whole network with a new fc) or lotar (LoTaR's fc); "
                   "the recipe's eval.protocol when not given.")
@click.option("--subnet/--no-subnet", default=None,
              help="supcon protocol on a multi-exit (SelfCon) encoder: also train a classifier on the sub-network "
                   "exit and report their ensemble (SelfCon's --subnet; default: the recipe's eval.supcon_subnet, on).")
@click.option("--exit", "exit_name", type=click.Choice(EVAL_EXITS),
              help="backbone, sub-network or ensemble: which exit of a multi-exit (SelfCon) encoder gives the features (default: the recipe's "
                   "eval.exit, backbone); ensemble concatenates both.")
@overwrite_option("reports of the same evaluation written before")
@click.option("--device", type=DeviceName(), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--precision", default="auto", show_default=True,
              help="Autocast of the backbone as it extracts features (and as the finetune protocol trains it): "
                   + PRECISION_CHOICES)
@user_errors
def linear_eval(target: Path, out: Path | None, store_path: Path | None, probe_split: Path | None,
                shots: tuple[str, ...], epochs: int | None, sdclr_epochs: int | None, knn: tuple[int, ...] | None,
                random_init: bool, protocol: str | None, subnet: bool | None, exit_name: str | None, overwrite: bool,
                device: str, precision: str) -> None:
    """The papers' evaluation protocols on a run folder or checkpoint, with many/medium/few groups."""
    from fastlt.evaluate.protocol import linear_eval as run_linear_eval
    from fastlt.train.device import resolve_device, resolve_precision
    from fastlt.train.distributed import launched_ranks

    if not launched_ranks().main:  # under torchrun, rank 0 evaluates and the others have nothing to do
        return

    resolved = resolve_device(device, f"--device {device}")
    overrides: dict[str, Any] = {}
    if probe_split is not None:
        overrides["train_split"] = str(probe_split.resolve())
    if epochs is not None:
        overrides["epochs"] = epochs
    if sdclr_epochs is not None:
        overrides["sdclr_epochs"] = sdclr_epochs
    if knn is not None:
        overrides["knn"] = knn
    if protocol is not None:
        overrides["protocol"] = protocol
    if exit_name is not None:
        overrides["exit"] = exit_name
    if subnet is not None:
        overrides["supcon_subnet"] = subnet
    result = run_linear_eval(target, out, resolved, store_path, overrides, random_init,
                             resolve_precision(precision, resolved, f"--precision {precision}").name, shots, overwrite)
    click.echo(result.markdown)
    for folder in result.folders.values():
        click.echo(f"wrote {folder}")


@main.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...", type=click.Path(path_type=Path))
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the table as CSV (full-precision numbers, few-shot std in its own column).")
@click.option("--md", "md_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the Markdown table to this file.")
@overwrite_option("existing --csv and --md files")
@user_errors
def compare(runs: tuple[Path, ...], csv_path: Path | None, md_path: Path | None, overwrite: bool) -> None:
    """Several runs' evaluation reports side by side, as one Markdown table on stdout.

    Each RUN is a run folder (every report folder in RUN/eval, one per kind of evaluation), a
    report folder or eval.json (that report), a folder of report folders (a linear-eval --out), or
    a folder of runs (each subfolder a run, e.g. runs/). A run without reports is left out, and
    one line on stderr says which and why; with no report at all, nothing is printed or written.
    One row per run and evaluation: method, pretraining split, epoch, protocol, full-shot overall,
    many / medium / few and group std, and an N-shot column (mean +- std over the subsets) where
    an N-shot report of the same checkpoint exists. Every report is read before anything is
    printed or written; files are replaced atomically.
    """
    from fastlt.evaluate.compare import compare_runs, write_comparison

    check_free([csv_path, md_path], overwrite)
    comparison = compare_runs(runs)
    if comparison.left_out_line():
        click.echo(comparison.left_out_line(), err=True)
    click.echo(comparison.markdown(), nl=False)
    for path in write_comparison(comparison, csv_path, md_path):
        click.echo(f"wrote {path}")


@main.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for the PNGs (created if missing).")
@overwrite_option("PNGs of the same names in --out")
@user_errors
def plot(runs: tuple[Path, ...], out: Path, overwrite: bool) -> None:
    """Training curves of one or several run folders over epochs, one line per run, as PNGs in OUT.

    loss.png (one panel per loss objective); knn.png (the kNN monitor's held-out accuracy, class
    mean / many / medium / few, where train.monitor_every logged it); temperature.png;
    bcl_weights.png (BCL's mean augmentation weight per group; BCL runs only). A plot no run has
    data for is skipped, and one line says which and why.
    """
    from fastlt.evaluate.plots import plot_runs

    result = plot_runs(runs, out, overwrite)
    for path in result.written:
        click.echo(f"wrote {path}")
    if result.skipped_line():
        click.echo(result.skipped_line())


@main.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="File for the torchvision state dict, mean/std and provenance (torch.save, weights_only-safe).")
@overwrite_option("an existing --out file")
@user_errors
def export(target: Path, out: Path, overwrite: bool) -> None:
    """Write the pretrained backbone of a run folder or checkpoint as a torchvision ResNet state dict.

    Standard width (64) only; SDCLR's dense branch; load it with
    fastlt.evaluate.export.torchvision_resnet(arch, stem) and strict=True.
    """
    from fastlt.evaluate.export import export_torchvision

    exported = export_torchvision(target, out, overwrite)
    click.echo(f"wrote {out} ({exported['arch']}, {exported['stem']} stem, epoch {exported['fastlt']['epoch']})")


@main.group()
def bench() -> None:
    """Benchmarks: views against other pipelines, a training step's split, the evaluation protocols (JSON with --out)."""


@bench.command("views")
@click.option("--batch", type=click.IntRange(min=2), default=512, show_default=True, help="Images per batch.")
@click.option("--batches", type=click.IntRange(min=1),
              help="Batches per timed pass; the DataLoader contenders run one epoch of that many (default: 2 per "
                   "core, at least 4).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed passes after the warm-up; the best counts.")
@click.option("--recipe", default="cifar100_lt/simclr", show_default=True, help="Recipe whose [views] are timed.")
@click.option("--bcl", multiple=True, default=("cifar100_lt/bcl-i", "cifar100_lt/bcl-d"), show_default=True,
              help="BCL recipe whose boosted views are timed against PIL + RandAugment (repeatable).")
@click.option("--no-bcl", is_flag=True, help="Skip the BCL views.")
@click.option("--no-compile", is_flag=True, help="Skip the torch.compile contender (a cold compile costs ~40 s on a CPU).")
@click.option("--workers", type=click.IntRange(min=0),
              help="DataLoader workers and DALI threads (default: the usable CPU cores).")
@click.option("--device", type=DeviceName(), default="auto", show_default=True,
              help="Where fastlt and kornia run: " + DEVICE_HELP)
@click.option("--out", type=click.Path(path_type=Path), help="Write the result as JSON (atomically).")
@overwrite_option("an existing --out file")
@user_errors
def bench_views(batch: int, batches: int | None, repeats: int, recipe: str, bcl: tuple[str, ...], no_bcl: bool,
                no_compile: bool, workers: int | None, device: str, out: Path | None, overwrite: bool) -> None:
    """Two SimCLR views per image per second: fastlt against per-image PIL, kornia and DALI; BCL's views too."""
    from fastlt.bench.report import write_result
    from fastlt.bench.views import run_views_benchmark, views_table

    check_free([out], overwrite)
    result = run_views_benchmark(batch, batches, repeats, recipe, () if no_bcl else bcl, device, not no_compile,
                                 workers)
    click.echo(views_table(result))
    write_result(out, result)


@bench.command("train")
@click.argument("recipe", default="cifar100_lt/simclr")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a recipe value.")
@click.option("--steps", type=click.IntRange(min=1),
              help="Timed steps after one warm-up step (default: 5 on the synthetic store, the rest of an "
                   "epoch with --store).")
@click.option("--batch", type=click.IntRange(min=2), help="Batch size; same as --set train.batch_size=N.")
@click.option("--store", "store_path", type=click.Path(path_type=Path),
              help="Read this native store (with the recipe's split) instead of a temporary one of random images.")
@click.option("--device", type=DeviceName(), help=DEVICE_HELP + " Same as --set train.device=...")
@click.option("--workers", type=click.IntRange(min=0),
              help="The reference loop's DataLoader workers (default: the usable CPU cores).")
@click.option("--no-reference", is_flag=True, help="Time fastlt's step only.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the result as JSON (atomically).")
@overwrite_option("an existing --out file")
@user_errors
def bench_train(recipe: str, overrides: tuple[str, ...], steps: int | None, batch: int | None,
                store_path: Path | None, device: str | None, workers: int | None, no_reference: bool,
                out: Path | None, overwrite: bool) -> None:
    """A pretraining step split into load, views, forward + backward and optimiser, against the reference loop."""
    from fastlt.bench.report import write_result
    from fastlt.bench.train import run_train_benchmark, train_table

    check_free([out], overwrite)
    result = run_train_benchmark(recipe, overrides, steps, batch, store_path, device, workers, not no_reference)
    click.echo(train_table(result))
    write_result(out, result)


@bench.command("loader")
@click.option("--store", "store_path", type=click.Path(path_type=Path), required=True,
              help="A store made by `fastlt convert` (any --format).")
@click.option("--backend", type=click.Choice(["native", "ffcv", "dali"]),
              help="Check that the store is of this backend (a store has one).")
@click.option("--part", default="train", show_default=True, help="Store part to load.")
@click.option("--batch", type=click.IntRange(min=2), default=256, show_default=True, help="Images per batch.")
@click.option("--batches", type=click.IntRange(min=1), help="Batches per timed pass (default: one epoch).")
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True, help="Timed passes; the best counts.")
@click.option("--workers", type=click.IntRange(min=1), help="Decoding threads (default: the usable cores).")
@click.option("--device", type=DeviceName(), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--out", type=click.Path(path_type=Path), help="Write the result as JSON (atomically).")
@overwrite_option("an existing --out file")
@user_errors
def bench_loader(store_path: Path, backend: str | None, part: str, batch: int, batches: int | None, repeats: int,
                 workers: int | None, device: str, out: Path | None, overwrite: bool) -> None:
    """Images per second out of a store's loader, alone and with two SimCLR views."""
    from fastlt.bench.loader import loader_table, run_loader_benchmark
    from fastlt.bench.report import write_result

    check_free([out], overwrite)
    result = run_loader_benchmark(store_path, backend, part, batch, batches, repeats, device, workers)
    click.echo(loader_table(result))
    write_result(out, result)


@bench.command("linear-eval")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--store", "store_path", type=click.Path(path_type=Path),
              help="Use this store instead of the recipe's (it must hold the data the run trained on).")
@click.option("--epochs", type=click.IntRange(min=1), help="BCL probe epochs (default: the recipe's).")
@click.option("--sdclr-epochs", type=click.IntRange(min=1), help="SDCLR fc epochs (default: the recipe's).")
@click.option("--sdclr-few-shot-epochs", type=click.IntRange(min=1),
              help="SDCLR few-shot fc epochs, where the recipe has a few-shot list (default: the recipe's).")
@click.option("--device", type=DeviceName(), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--precision", default="auto", show_default=True,
              help="Autocast of the backbone as it extracts features: " + PRECISION_CHOICES)
@click.option("--out", type=click.Path(path_type=Path), help="Write the result as JSON (atomically).")
@overwrite_option("an existing --out file")
@user_errors
def bench_linear_eval(target: Path, store_path: Path | None, epochs: int | None, sdclr_epochs: int | None,
                      sdclr_few_shot_epochs: int | None, device: str, precision: str, out: Path | None,
                      overwrite: bool) -> None:
    """Wall time of BCL's protocol (cached features) against SDCLR's on the same run or checkpoint."""
    from fastlt.bench.linear_eval import linear_eval_table, run_linear_eval_benchmark
    from fastlt.bench.report import write_result

    check_free([out], overwrite)
    result = run_linear_eval_benchmark(target, store_path, device, precision, epochs, sdclr_epochs,
                                       sdclr_few_shot_epochs)
    click.echo(linear_eval_table(result))
    write_result(out, result)


@main.command()
def info() -> None:
    """Versions, devices, and what `auto` chooses here (precision, memory format, compile, view compile) and why."""
    import torch

    from fastlt.train.device import (
        SAFE_1X1_INPUT_CHANNELS, VIEW_COMPILE_MIN_IMAGES, bf16_support, cpu_features, resolve_compile,
        resolve_precision, resolve_view_compile,
    )
    from fastlt.train.runinfo import package_versions

    features = cpu_features()
    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    auto: dict[str, Any] = {}
    for device in [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []):
        precision = resolve_precision("auto", device)
        compiled, compile_why = resolve_compile("auto", device)
        short_run = resolve_view_compile("auto", device, 0)[0]
        long_run, views_why = resolve_view_compile("auto", device, VIEW_COMPILE_MIN_IMAGES)
        auto[device.type] = {
            "precision": precision.name, "precision_reason": precision.reason,
            "bf16_native": bf16_support(device)[0],
            "compile": compiled, "compile_reason": compile_why,
            "compile_views": "on" if short_run else "long runs" if long_run else "off",
            "compile_views_reason": views_why if short_run or not long_run else
            f"auto: on for runs of at least {VIEW_COMPILE_MIN_IMAGES:,} training images (epochs x split size)",
        }
    auto["cpu"]["memory_format"] = ("channels_last, except contiguous for models with a strided 1x1 convolution "
                                    f"of fewer than {SAFE_1X1_INPUT_CHANNELS} input channels" if features.x86
                                    else "channels_last")
    report = {
        "versions": package_versions(),
        "devices": devices,
        "cpu": {"name": features.name, "torch_capability": features.aten_capability,
                "avx512_bf16": features.avx512_bf16, "amx_bf16": features.amx_bf16,
                "onednn_max_isa": features.onednn_max_isa or "unset", "threads": torch.get_num_threads()},
        "cuda_build": torch.version.cuda,
        "auto": auto,
        "installed_extras": {"nvidia.dali": importable("nvidia.dali"), "ffcv": importable("ffcv"),
                             "note": "store backends (fastlt convert --format): native always, ffcv and dali "
                                     "where installed"},
    }
    click.echo(json.dumps(report, indent=2))


def importable(module: str) -> bool:
    """Whether an optional backend is installed (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
