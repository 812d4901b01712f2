"""The fastlt command line: convert, splits, pretrain, linear-eval, info.

Every command turns a FastltError into ``error: <one line>`` on stderr and exit status 1.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from fastlt.errors import FastltError


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Report FastltError as one line and exit 1, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FastltError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)

    return wrapper


@click.group()
@click.version_option(package_name="fastlt")
def main() -> None:
    """Fast contrastive self-supervised learning on long-tailed image data."""


@main.command()
@click.argument("dataset", type=click.Choice(["cifar10", "cifar100", "digits"]))
@click.option("--source", type=click.Path(path_type=Path), help="CIFAR python tarball or its extracted folder.")
@click.option("--download", is_flag=True, help="Download the official CIFAR tarball (checksummed) first.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the native store.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the coloured digits (digits only).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store (the new one is built fully first).")
@user_errors
def convert(dataset: str, source: Path | None, download: bool, out: Path, seed: int, overwrite: bool) -> None:
    """Turn a raw data set into a native store (uint8 NHWC images, labels, meta.json)."""
    from fastlt.data.sources import download_cifar, make_coloured_digits, read_cifar
    from fastlt.data.store import write_native_store

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
    path = write_native_store(out, dataset, class_names, parts, origin, overwrite=overwrite)
    counts = ", ".join(f"{name} {len(part.labels)}" for name, part in parts.items())
    click.echo(f"wrote {path} ({counts})")


@main.group()
def splits() -> None:
    """Generate long-tailed split index files."""


@splits.command("cifar")
@click.argument("dataset", type=click.Choice(["cifar10", "cifar100"]))
@click.option("--store", "store_path", type=click.Path(path_type=Path), required=True,
              help="Native CIFAR store whose train labels define the classes.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the split files.")
@click.option("--split-ids", default="1,2,3", show_default=True, help="Comma-separated split numbers.")
@click.option("--val-list", type=click.Path(path_type=Path), help="Use this val index file (e.g. SDCLR's) as the held-out set.")
@click.option("--seed", type=int, default=0, show_default=True)
@user_errors
def splits_cifar(dataset: str, store_path: Path, out: Path, split_ids: str, val_list: Path | None, seed: int) -> None:
    """CIFAR-10-LT / CIFAR-100-LT with the SDCLR profile and pool rules (D_i, D_b, S_b, eval lists)."""
    from fastlt.data.splits import load_split, write_cifar_lt_splits
    from fastlt.data.store import NativeStore

    labels = NativeStore.open(store_path).part("train").labels
    val = load_split(val_list, len(labels)) if val_list else None
    ids = [int(item) for item in split_ids.split(",") if item.strip()]
    for path in write_cifar_lt_splits(dataset, labels, out, ids, val_list=val, seed=seed):
        click.echo(f"wrote {path}")


@splits.command("digits")
@click.option("--store", "store_path", type=click.Path(path_type=Path), required=True, help="Native digits store.")
@click.option("--ratio", type=float, default=10.0, show_default=True, help="Largest / smallest class count.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output .npy (a .json manifest goes beside it).")
@user_errors
def splits_digits(store_path: Path, ratio: float, seed: int, out: Path) -> None:
    """A long-tailed split of the digits train part with any imbalance ratio."""
    from fastlt.data.splits import write_digits_lt_split
    from fastlt.data.store import NativeStore

    labels = NativeStore.open(store_path).part("train").labels
    click.echo(f"wrote {write_digits_lt_split(labels, ratio, seed, out)}")


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path), required=False)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a recipe value.")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue this run folder from its last checkpoint.")
@click.option("--split", type=click.Path(path_type=Path),
              help="Train on this split file (SDCLR format, e.g. a published one); same as --set data.split=FILE.")
@click.option("--until-epoch", type=int, help="Stop after this epoch (the schedule still spans train.epochs).")
@user_errors
def pretrain(recipe: Path | None, overrides: tuple[str, ...], resume: Path | None, split: Path | None,
             until_epoch: int | None) -> None:
    """Self-supervised pretraining from a TOML recipe (see pipelines/). Prints the run folder last."""
    if split is not None:
        overrides = (*overrides, f"data.split={json.dumps(str(split))}")
    from fastlt.recipe import load_recipe, recipe_with_overrides
    from fastlt.train.trainer import load_run_config
    from fastlt.train.trainer import pretrain as run_pretraining

    if resume is not None:
        if recipe is not None:
            raise FastltError("pretrain: give a RECIPE or --resume RUN_DIR, not both")
        config_path = str(resume / "config.json")
        resumed = recipe_with_overrides(load_run_config(resume), overrides, config_path)
        run_dir = run_pretraining(resumed, config_path, resume=resume, until_epoch=until_epoch)
    else:
        if recipe is None:
            raise FastltError("pretrain: missing RECIPE (a TOML file, e.g. pipelines/digits_lt/simclr.toml)")
        run_dir = run_pretraining(load_recipe(recipe, overrides), str(recipe), until_epoch=until_epoch)
    click.echo(str(run_dir))


@main.command("linear-eval")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Report folder (default: <run>/eval).")
@click.option("--store", "store_path", type=click.Path(path_type=Path), help="Use this store instead of the recipe's.")
@click.option("--train-split", type=click.Path(path_type=Path), help="Indices of the probe's training samples.")
@click.option("--epochs", type=int, help="Probe epochs (default: the recipe's, 500 in the BCL protocol).")
@click.option("--knn", help="Comma-separated k values for kNN, e.g. 1,10; empty for none.")
@click.option("--random-init", is_flag=True, help="Also evaluate a randomly initialised backbone of the same architecture.")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", default="auto", show_default=True, help="Feature extraction: auto, bf16, fp32.")
@user_errors
def linear_eval(target: Path, out: Path | None, store_path: Path | None, train_split: Path | None, epochs: int | None,
                knn: str | None, random_init: bool, device: str, precision: str) -> None:
    """Frozen-feature linear probe and kNN of a run folder or checkpoint, with many/medium/few groups."""
    from fastlt.evaluate.protocol import linear_eval as run_linear_eval
    from fastlt.train.device import resolve_device, resolve_precision

    resolved = resolve_device(device)
    overrides: dict[str, Any] = {}
    if train_split is not None:
        overrides["train_split"] = str(train_split)
    if epochs is not None:
        overrides["epochs"] = epochs
    if knn is not None:
        overrides["knn"] = tuple(int(k) for k in knn.split(",") if k.strip())
    result = run_linear_eval(target, out, resolved, store_path, overrides, random_init,
                             resolve_precision(precision, resolved).dtype)
    click.echo(result.markdown)
    click.echo(f"wrote {result.json_path} and {result.markdown_path}")


@main.command()
def info() -> None:
    """Versions, devices, and which optional backends (DALI, FFCV, compile) are usable here."""
    import torch

    from fastlt.train.device import bf16_supported, compile_usable
    from fastlt.train.runinfo import package_versions

    compile_ok, compile_why = compile_usable()
    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    report = {
        "versions": package_versions(),
        "devices": devices,
        "cuda_build": torch.version.cuda,
        "bf16": {"cpu": bf16_supported(torch.device("cpu")),
                 **({"cuda": bf16_supported(torch.device("cuda"))} if torch.cuda.is_available() else {})},
        "compile": {"usable": compile_ok, "backend": compile_why,
                    "default": "on for CUDA, off for CPU"},
        "dali": importable("nvidia.dali"),
        "ffcv": importable("ffcv"),
        "threads": torch.get_num_threads(),
    }
    click.echo(json.dumps(report, indent=2))


def importable(module: str) -> bool:
    """Whether an optional backend is installed (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
