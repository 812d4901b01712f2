"""Measure where a training step's time goes, and what batched device-side views buy.

    python tools/bench.py [--recipe pipelines/cifar100_lt/simclr.toml] [--batch 256] [--steps 5]
                          [--device auto] [--set train.precision=fp32 ...] [--out bench.json]

Two measurements, each on synthetic uint8 CIFAR-sized images (no data set needed):
1. views: fastlt's SimCLRViews on a whole batch vs the per-image torchvision.transforms.v2
   pipeline the reference code runs in its data loader (same transforms, same parameters
   ranges), in images per second for one view;
2. step: one training step of the recipe's method split into views, forward + backward, and
   optimiser, with the device synchronised around each part.
It prints JSON with the machine it ran on; numbers from another machine are not comparable.
"""
from __future__ import annotations

import argparse
import dataclasses
import contextlib
import json
import platform
import time
from pathlib import Path

import torch
import torchvision.transforms.v2 as T

from fastlt.augment.views import SimCLRViews, ViewConfig
from fastlt.data.loader import Batch
from fastlt.methods import build_method
from fastlt.methods.base import StepContext
from fastlt.recipe import load_recipe
from fastlt.train.device import cpu_features, resolve_device, resolve_memory_format, resolve_precision
from fastlt.train.runinfo import device_description, package_versions

REPO = Path(__file__).resolve().parents[1]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call, device synchronised."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def reference_pipeline(config: ViewConfig) -> T.Compose:
    """The per-image torchvision pipeline of the reference repositories (CIFAR views)."""
    return T.Compose([
        T.RandomResizedCrop(config.size, scale=config.scale, ratio=config.ratio,
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(config.flip_p),
        T.RandomApply([T.ColorJitter(*config.jitter)], p=config.jitter_p),
        T.RandomGrayscale(config.grayscale_p),
        T.ToDtype(torch.float32, scale=True),
    ])


def bench_views(images: torch.Tensor, device: torch.device, repeats: int) -> dict:
    config = ViewConfig.cifar()
    views = SimCLRViews(config)
    generator = torch.Generator(device).manual_seed(0)
    on_device = images.to(device)
    batched = timed(device, lambda: views(on_device, generator), repeats)
    reference = reference_pipeline(config)
    per_image_count = min(len(images), 256)
    per_image = timed(torch.device("cpu"), lambda: [reference(image) for image in images[:per_image_count]], 1)
    return {
        "batch": len(images),
        "fastlt_batched_images_per_s": round(len(images) / batched, 1),
        "torchvision_per_image_images_per_s_one_core_process": round(per_image_count / per_image, 1),
    }


def bench_step(recipe_path: Path, overrides: list[str], images: torch.Tensor, device: torch.device,
               repeats: int) -> dict:
    recipe = load_recipe(recipe_path, [f"train.batch_size={len(images)}", *overrides])
    precision = resolve_precision(recipe.train.precision, device)
    method = build_method(recipe, num_samples=len(images)).to(device)
    memory_format, memory_format_reason = resolve_memory_format(recipe.train.memory_format, device, method)
    method.set_memory_format(memory_format)
    method.on_epoch_start(1)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator(device).manual_seed(0)
    batch = Batch(images.to(device), torch.zeros(len(images), dtype=torch.long, device=device),
                  torch.arange(len(images), device=device))
    context = StepContext(autocast=precision.autocast(device), backward=lambda loss: loss.backward())
    views = method.make_views(batch, generator)
    return {
        "recipe": str(recipe_path.relative_to(REPO) if recipe_path.is_relative_to(REPO) else recipe_path),
        "method": recipe.method.name,
        "precision": precision.name,
        "precision_reason": precision.reason,
        "memory_format": memory_format,
        "memory_format_reason": memory_format_reason,
        "batch": len(images),
        "seconds": {
            "views": round(timed(device, lambda: method.make_views(batch, generator), repeats), 4),
            "forward_backward": round(timed(device, lambda: method.step(views, batch.labels, context), repeats), 4),
            "optimizer": round(timed(device, optimizer.step, repeats), 4),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "pipelines" / "cifar100_lt" / "simclr.toml")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed repeats (best of)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe override, e.g. train.precision=fp32 or model.width=16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with contextlib.suppress(AttributeError):
        torch.backends.cudnn.benchmark = True
    result = {
        "machine": {**device_description(device), "platform": platform.platform(), "cpus": torch.get_num_threads(),
                    "cpu": dataclasses.asdict(cpu_features())},
        "versions": package_versions(),
        "views": bench_views(images, device, args.steps),
        "step": bench_step(args.recipe, args.set, images, device, args.steps),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
