"""Tool commands: `fastlt bench` times views, a training step, a store's loader and the evaluation protocols
against other pipelines, and `fastlt info` says what `auto` chooses on this machine and why.

Each command imports what it times inside itself, so that `fastlt --help` answers without loading torch.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import click

from fastlt.cli.shared import DEVICE_HELP, PRECISION_CHOICES, DeviceName, overwrite_option, user_errors
from fastlt.files import check_free


@click.group()
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


@click.command()
def info() -> None:
    """Versions, devices, and what `auto` chooses here (precision, memory format, compile, view compile) and why."""
    import torch

    from fastlt.hardware import (
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
