"""`fastlt bench train`: where a pretraining step's time goes, against the reference training loop.

fastlt's step as the trainer runs it (the resident NativeLoader, device-side views, the
hardware ``auto`` chooses here, compile where the trainer would compile), split into load
(the loader's batch gather), views, forward + backward and optimiser, with the device
synchronised between the parts; then the same steps unsplit, for the throughput without
the extra synchronisation. The reference loop is what the SDCLR / BCL code runs: a torch
DataLoader with one worker per core making PIL views, the batch copied to the device, the
same architecture and batch in eager fp32 (contiguous memory), plain SGD.

Both read the same images: a temporary native store of random CIFAR-sized images, or an
existing ``--store``. The first step of each loop is a warm-up (worker start-up, a compile)
and is reported apart; the parts are medians over the timed steps.
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from fastlt.bench.reference import PILImages, ReferenceViews, reference_loader
from fastlt.bench.report import say, seconds, table
from fastlt.bench.timing import machine_description, synchronize, usable_cores
from fastlt.bench.views import synthetic_images
from fastlt.data.loader import NativeLoader
from fastlt.data.splits import split_or_all
from fastlt.data.store import Store, StorePart, write_native_store
from fastlt.errors import FastltError
from fastlt.methods import ContrastiveMethod, StepContext, build_method
from fastlt.methods.boost import MAPPINGS
from fastlt.recipe import Recipe, as_override, find_recipe, load_recipe, option_overrides, with_store_lists
from fastlt.hardware import PRECISION_TYPES, resolve_device
from fastlt.train.run_state import build_optimizer, choose_hardware, precision_of, seeded_method

DEFAULT_RECIPE = "cifar100_lt/simclr"
DEFAULT_STEPS = 5  # timed steps on the synthetic store (one warm-up step comes first)
WARMUP_STEPS = 1
NUM_CLASSES = 100  # labels of the synthetic store (CIFAR-100's count; only SupCon looks at them)
FASTLT_PARTS = ("load", "views", "forward_backward", "optimizer")
REFERENCE_PARTS = ("load", "to_device", "forward_backward", "optimizer")
OUTSIDE_MODEL = ("load", "views", "to_device")


class StepTimer:
    """Wall time of the named parts of each step, the device synchronised at every mark."""

    def __init__(self, device: torch.device):
        self.device = device
        self.steps: list[dict[str, float]] = []
        self._last = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self.steps.append({})
        self._last = time.perf_counter()

    def mark(self, part: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.steps[-1][part] = now - self._last
        self._last = now

    def summary(self, parts: Iterable[str], batch: int) -> dict[str, Any]:
        """Medians of the timed steps per part, the step, images/s, the share outside the model; the warm-up apart."""
        parts = tuple(parts)
        warmup, timed = self.steps[:WARMUP_STEPS], self.steps[WARMUP_STEPS:]
        medians = {part: statistics.median(step[part] for step in timed) for part in parts}
        step = sum(medians.values())
        outside = sum(medians[part] for part in parts if part in OUTSIDE_MODEL)
        return {
            "timed_steps": len(timed),
            "seconds": {part: round(value, 6) for part, value in medians.items()},
            "step_seconds": round(step, 6),
            "images_per_s": round(batch / step, 1),
            "share_outside_model": round(outside / step, 4),
            "warmup_step_seconds": round(sum(sum(s.values()) for s in warmup), 3),
        }


def endless(batches: Callable[[], Iterable]) -> Iterator:
    """Batches of epoch after epoch, so a run may ask for more steps than one epoch has."""
    while True:
        yield from batches()


def write_synthetic_store(folder: Path, count: int) -> Path:
    """A native store of ``count`` random 32x32 images (train part only), written as ``fastlt convert`` writes."""
    images, labels = synthetic_images(count)
    class_names = [f"class-{c}" for c in range(NUM_CLASSES)]
    return write_native_store(folder / "synthetic", "synthetic", class_names,
                              {"train": StorePart(images, labels % NUM_CLASSES)},
                              {"dataset": "synthetic noise for fastlt bench train", "seed": 0})


def uniform_weights(method: ContrastiveMethod, seed: int) -> None:
    """BCL: per-sample weights uniform in [0, 1], a mid-training state (in epoch 1 they are 0 and no op fires)."""
    if method.boost is not None:
        weights = method.boost.weights
        generator = torch.Generator(weights.device).manual_seed(seed)
        weights.copy_(torch.rand(weights.shape, generator=generator, device=weights.device))


def fastlt_steps(recipe: Recipe, part: StorePart, indices: np.ndarray, steps: int) -> dict[str, Any]:
    """fastlt's training step, as train_one_epoch runs it, timed part by part and then unsplit."""
    device = resolve_device(recipe.train.device)
    batch, seed = recipe.train.batch_size, recipe.train.seed
    generator = torch.Generator(device).manual_seed(seed)
    loader = NativeLoader(part, indices, batch, device, generator, shuffle=True, drop_last=recipe.train.drop_last)
    method = seeded_method(recipe, len(part.labels))
    choices = choose_hardware(recipe, method, len(indices))
    method = method.to(device)
    method.set_memory_format(choices.memory_format)
    uniform_weights(method, seed)
    optimizer = build_optimizer(method, recipe.optim, device)
    scaler = torch.amp.GradScaler(device.type, enabled=PRECISION_TYPES[choices.precision][1])
    if choices.compile:
        method.enable_compile()
    if choices.compile_views:
        method.views.enable_compile()
    context = StepContext(autocast=precision_of(choices).autocast(device),
                          backward=lambda loss: scaler.scale(loss).backward())
    view_generator = torch.Generator(device).manual_seed(seed + 1)
    method.train()
    method.on_epoch_start(1)
    batches = endless(lambda: iter(loader))
    timer = StepTimer(device)
    for _ in range(WARMUP_STEPS + steps):
        timer.start()
        data = next(batches)
        timer.mark("load")
        views = method.make_views(data, view_generator)
        timer.mark("views")
        output = method.step(views, data.labels, context)
        if method.boost is not None:
            method.boost.observe(data.indices, output.per_sample)
        timer.mark("forward_backward")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        timer.mark("optimizer")
    result = timer.summary(FASTLT_PARTS, batch)

    synchronize(device)  # unsplit: the trainer's loop, one synchronisation at the end
    started = time.perf_counter()
    seen = 0
    for _ in range(steps):
        data = next(batches)
        method.train_step(data, view_generator, context)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        seen += len(data.labels)
    synchronize(device)
    result["unsplit"] = {"steps": steps, "images_per_s": round(seen / (time.perf_counter() - started), 1)}
    result["hardware"] = {"device": choices.device, "precision": choices.precision,
                          "memory_format": choices.memory_format, "compile": choices.compile,
                          "compile_views": choices.compile_views, "reasons": choices.reasons}
    return result


def reference_steps(recipe: Recipe, images: np.ndarray, labels: np.ndarray, steps: int,
                    workers: int) -> dict[str, Any]:
    """The reference loop: DataLoader + PIL views in workers, copy to the device, eager fp32, plain SGD."""
    device = resolve_device(recipe.train.device)
    batch, o = recipe.train.batch_size, recipe.optim
    torch.manual_seed(recipe.train.seed)
    method = build_method(recipe, len(images)).to(device)
    method.set_memory_format("contiguous")  # the reference code never changes the layout
    uniform_weights(method, recipe.train.seed)
    optimizer = torch.optim.SGD(method.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    context = StepContext(autocast=contextlib.nullcontext, backward=lambda loss: loss.backward())
    boost = method.boost
    views = ReferenceViews(recipe.views, method.num_views, MAPPINGS[boost.mapping] if boost is not None else 0,
                           boost.mapping if boost is not None else "bcl-i")
    loader = reference_loader(PILImages(images, labels, views), batch, workers, recipe.train.drop_last,
                              pin_memory=device.type == "cuda")
    method.train()
    method.on_epoch_start(1)
    batches = endless(lambda: iter(loader))
    timer = StepTimer(device)
    for _ in range(WARMUP_STEPS + steps):
        timer.start()
        *view_batches, label_batch = next(batches)
        timer.mark("load")
        views_on_device = tuple(v.to(device, non_blocking=True) for v in view_batches)
        label_batch = label_batch.to(device, non_blocking=True)
        timer.mark("to_device")
        method.step(views_on_device, label_batch, context)
        timer.mark("forward_backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.mark("optimizer")
    result = timer.summary(REFERENCE_PARTS, batch)
    result["workers"] = workers
    result["pipeline"] = views.describe()
    result["hardware"] = {"device": device.type, "precision": "fp32", "memory_format": "contiguous", "compile": False}
    return result


def run_train_benchmark(recipe: str = DEFAULT_RECIPE, overrides: tuple[str, ...] = (), steps: int | None = None,
                        batch: int | None = None, store: Path | None = None, device: str | None = None,
                        workers: int | None = None, reference: bool = True) -> dict[str, Any]:
    """Time fastlt's step and the reference loop's on the same images; returns the result."""
    shortcuts = {"--batch": ("train.batch_size", batch), "--device": ("train.device", device)}
    sets = (*map(as_override, overrides), *option_overrides(shortcuts))
    path = find_recipe(recipe)
    loaded = load_recipe(path, sets)
    if steps is not None and steps < 1:
        raise FastltError(f"--steps: must be >= 1, got {steps}")
    # A missing CUDA device is one line, before any work, naming --device where that set it.
    resolve_device(loaded.train.device, f"--device {device}" if device is not None else None)
    workers = usable_cores() if workers is None else workers
    batch = loaded.train.batch_size
    with tempfile.TemporaryDirectory(prefix="fastlt-bench-") as scratch:
        if store is None:
            steps = steps or DEFAULT_STEPS
            count = batch * (WARMUP_STEPS + steps)
            say(f"bench train: writing a temporary store of {count} random 32x32 images")
            store_path, split = write_synthetic_store(Path(scratch), count), ""
            data = f"temporary synthetic store, {count} random 32x32 images, all of them"
        else:
            store_path, split = Path(store), loaded.data.split
        opened = Store.open(store_path)
        split = with_store_lists(loaded, opened.list_file).data.split if split else ""
        part = opened.part(loaded.data.part)
        indices = split_or_all(split, len(part.labels))
        if store is not None:
            per_epoch = len(indices) // batch + (len(indices) % batch > 1 and not loaded.train.drop_last)
            steps = steps or max(1, per_epoch - WARMUP_STEPS)
            data = f"{store_path} ({loaded.data.part}, split {split or 'all'}: {len(indices)} images)"
        say(f"bench train: {path}, method {loaded.method.name}, batch {batch}, {steps} timed steps after "
            f"{WARMUP_STEPS} warm-up")
        say("  fastlt step ...")
        fastlt = fastlt_steps(loaded, part, indices, steps)
        if reference:
            say(f"  reference loop ({workers} DataLoader workers) ...")
            images = np.asarray(part.images[indices])
            labels = np.asarray(part.labels[indices], dtype=np.int64)
            ref: dict[str, Any] = reference_steps(loaded, images, labels, steps, workers)
        else:
            ref = {"status": "skipped", "reason": "--no-reference"}
    device_used = resolve_device(loaded.train.device)
    return {
        "benchmark": "train",
        "machine": machine_description(device_used),
        "settings": {"recipe": str(path), "overrides": [override.assignment for override in sets],
                     "method": loaded.method.name,
                     "model": {"arch": loaded.model.arch, "width": loaded.model.width, "stem": loaded.model.stem},
                     "batch": batch, "timed_steps": steps, "warmup_steps": WARMUP_STEPS, "data": data,
                     "device": str(device_used), "workers": workers,
                     "parts": "medians over the timed steps, the device synchronised between the parts",
                     "boost_weights": "uniform in [0, 1] (BCL recipes)"},
        "fastlt": fastlt,
        "reference": ref,
        "speedup": (round(ref["step_seconds"] / fastlt["step_seconds"], 3) if "step_seconds" in ref else None),
    }


def train_table(result: dict[str, Any]) -> str:
    """fastlt's and the reference's parts side by side."""
    fastlt, ref = result["fastlt"], result["reference"]
    measured = "step_seconds" in ref
    names = {"load": "load (batch gather | waiting for the workers' views)", "views": "views",
             "to_device": "copy to the device", "forward_backward": "forward + backward", "optimizer": "optimiser"}
    rows = []
    for part, label in names.items():
        mine = fastlt["seconds"].get(part)
        theirs = ref["seconds"].get(part) if measured else None
        if part == "views" and measured:
            theirs_text = "(in load)"
        else:
            theirs_text = seconds(theirs) if measured else "-"
        rows.append([label, seconds(mine), theirs_text])
    rows += [["step", seconds(fastlt["step_seconds"]), seconds(ref["step_seconds"]) if measured else "-"],
             ["images/s", f"{fastlt['images_per_s']:,.0f}", f"{ref['images_per_s']:,.0f}" if measured else "-"],
             ["images/s, unsplit", f"{fastlt['unsplit']['images_per_s']:,.0f}", "-"],
             ["share outside the model", f"{fastlt['share_outside_model']:.1%}",
              f"{ref['share_outside_model']:.1%}" if measured else "-"],
             ["warm-up step", seconds(fastlt["warmup_step_seconds"]),
              seconds(ref["warmup_step_seconds"]) if measured else "-"]]
    settings, hardware = result["settings"], fastlt["hardware"]
    cpu, gpu = result["machine"]["cpu"], result["machine"]["gpu"]
    header = (f"{settings['method']} ({settings['model']['arch']}, width {settings['model']['width']}), batch "
              f"{settings['batch']}, {settings['timed_steps']} timed steps; {cpu['name']}, {cpu['cores']} cores"
              + (f", {gpu}" if gpu else ""))
    chosen = (f"fastlt: {hardware['device']}, {hardware['precision']}, {hardware['memory_format']}, "
              f"compile {'on' if hardware['compile'] else 'off'}, "
              f"views compiled {'on' if hardware.get('compile_views') else 'off'}; reference: fp32, contiguous, eager"
              + ("" if measured else f" (skipped: {ref['reason']})"))
    speedup = f"step speed-up over the reference: {result['speedup']:.2f}x" if result["speedup"] else ""
    return "\n".join(line for line in [header, chosen, table(["part", "fastlt", "reference"], rows,
                                                              [False, True, True]), speedup] if line)
