"""`fastlt bench loader`: images per second out of a store's loader, alone and with two SimCLR views.

The loader is the one pretraining builds for the store's backend (``make_loader``: native,
FFCV or DALI), over the whole part, shuffled, on the chosen device; a pass is one epoch (or
``--batches`` batches of it). The views are the recipe's that fit the images: CIFAR views for
images up to 64 px, ImageNet views (224 px, blur) above. Compare backends by converting the
same data to each (``fastlt convert ... --format``) and running this on every store.
"""
from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import torch

from fastlt.augment.views import SimCLRViews, ViewConfig
from fastlt.bench.report import rate, say, table
from fastlt.bench.timing import best_time, machine_description, usable_cores
from fastlt.data.backends import make_loader
from fastlt.data.store import Store
from fastlt.errors import FastltError
from fastlt.hardware import resolve_device

SMALL_IMAGES = 64  # up to this side the CIFAR views apply, above it the ImageNet ones


def run_loader_benchmark(store_path: Path, backend: str | None = None, part: str = "train", batch: int = 256,
                         batches: int | None = None, repeats: int = 2, device: str = "auto",
                         workers: int | None = None) -> dict[str, Any]:
    """Time the store's loader alone and followed by two views per image; returns the result."""
    store = Store.open(store_path)
    if backend is not None and backend != store.backend:
        raise FastltError(f"--backend {backend}: {store_path} is a {store.backend} store "
                          f"(convert the data with --format {backend} to bench that backend)")
    if batch < 2 or repeats < 1 or (batches is not None and batches < 1):
        raise FastltError(f"bench loader: --batch must be >= 2, --repeats and --batches >= 1 "
                          f"(got {batch}, {repeats}, {batches})")
    torch_device = resolve_device(device, f"--device {device}")
    workers = workers or usable_cores()
    height, width, _ = store.meta["image_shape"]
    config = ViewConfig.cifar() if max(height, width) <= SMALL_IMAGES else ViewConfig.imagenet()
    views = SimCLRViews(config)
    generator = torch.Generator(torch_device).manual_seed(0)
    view_generator = torch.Generator(torch_device).manual_seed(1)
    loader = make_loader(store, part, None, batch, torch_device, generator, workers=workers)
    steps = min(len(loader), batches or len(loader))
    images = loader.num_samples if steps == len(loader) else steps * batch  # only an epoch's last batch is short

    def load() -> None:  # every backend yields batches whose pixels are already decoded
        for _ in islice(loader, steps):
            pass

    def load_and_view() -> None:
        for one in islice(loader, steps):
            views.many(one.images, view_generator, 2)

    say(f"bench loader: {store.backend} store {store_path}, part {part}, {steps} batches of {batch}, "
        f"{workers} workers, on {torch_device}")
    timings = {"load": best_time(load, torch_device, repeats), "load_and_views": best_time(load_and_view, torch_device,
                                                                                           repeats)}
    return {
        "benchmark": "loader",
        "machine": machine_description(torch_device),
        "settings": {"store": str(store_path), "backend": store.backend, "part": part, "batch": batch,
                     "batches_per_pass": steps, "images_per_pass": images, "repeats": repeats, "workers": workers,
                     "device": str(torch_device), "image_shape": [height, width, 3], "view_size": config.size,
                     "rate": "images per second; best pass after a warm-up pass; views: two per image"},
        "results": {name: {"seconds_per_pass": round(seconds, 6), "images_per_s": round(images / seconds, 1)}
                    for name, seconds in timings.items()},
    }


def loader_table(result: dict[str, Any]) -> str:
    """The two rates under a header naming the store, the machine and the settings."""
    settings, cpu, gpu = result["settings"], result["machine"]["cpu"], result["machine"]["gpu"]
    header = (f"{settings['backend']} store, {settings['image_shape'][0]}x{settings['image_shape'][1]} images, "
              f"batch {settings['batch']}, {settings['workers']} workers, on {settings['device']}; "
              f"{cpu['name']}, {cpu['cores']} cores" + (f", {gpu}" if gpu else ""))
    rows = [["load (uint8 batches on the device)", rate(result["results"]["load"]["images_per_s"])],
            [f"load + two {settings['view_size']} px views", rate(result["results"]["load_and_views"]["images_per_s"])]]
    return "\n".join([header, table(["pass", "images/s"], rows, [False, True])])
