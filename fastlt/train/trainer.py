"""The pretraining loop: resident data, device-side views, AMP, channels_last, checkpoints, logs.

One run = one folder: config.json (the resolved recipe), run.json (seed, commit,
versions, device), metrics.jsonl (one line per epoch) and checkpoints/last.pt,
rewritten atomically at the end of every epoch. ``resume`` continues a run exactly:
model, optimiser, loss scaler, method state (e.g. BCL memory) and every RNG come back.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fastlt.data.loader import NativeLoader
from fastlt.data.splits import class_counts, class_groups, split_or_all
from fastlt.data.store import NativeStore
from fastlt.errors import FastltError
from fastlt.files import write_json_atomic
from fastlt.methods import ContrastiveMethod, StepContext, build_method
from fastlt.methods.boost import GROUP_NAMES
from fastlt.recipe import Recipe
from fastlt.train.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from fastlt.train.device import resolve_compile, resolve_device, resolve_precision
from fastlt.train.runinfo import run_record
from fastlt.train.schedule import warmup_cosine_lr

CHECKPOINT_NAME = "checkpoints/last.pt"


@dataclass
class RunState:
    """Everything that moves during training and must survive a resume."""

    method: ContrastiveMethod
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data_generator: torch.Generator
    view_generator: torch.Generator
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool) -> list[dict[str, Any]]:
    """One group, or two when BN parameters and biases (all 1-D tensors) are excluded from decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bn_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decayed = [p for p in params if p.ndim > 1]
    undecayed = [p for p in params if p.ndim <= 1]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": undecayed, "weight_decay": 0.0}]


@dataclass(frozen=True)
class TrainingData:
    """The resident loader, the size of the store part, and each sample's class group (diagnostics)."""

    loader: NativeLoader
    generator: torch.Generator  # the loader's: batch order
    part_size: int
    sample_groups: torch.Tensor  # [part_size] int8: 0 many, 1 medium, 2 few, -1 not in the split


def load_training_data(recipe: Recipe, device: torch.device, generator: torch.Generator) -> TrainingData:
    """Open the store, apply the split, and put the training images on the device once."""
    store = NativeStore.open(Path(recipe.data.store))
    part = store.part(recipe.data.part)
    labels = np.asarray(part.labels)
    indices = split_or_all(recipe.data.split, len(labels))
    loader = NativeLoader(
        part, indices, recipe.train.batch_size, device, generator, shuffle=True, drop_last=recipe.train.drop_last
    )
    groups = class_groups(class_counts(indices, labels, store.num_classes), recipe.eval.groups)
    group_of_class = np.full(store.num_classes, -1, dtype=np.int8)
    for code, name in enumerate(GROUP_NAMES):
        group_of_class[groups[name]] = code
    sample_groups = np.full(len(labels), -1, dtype=np.int8)
    sample_groups[indices] = group_of_class[labels[indices]]
    return TrainingData(loader, generator, len(labels), torch.from_numpy(sample_groups).to(device))


def new_run_dir(recipe: Recipe, recipe_path: str) -> Path:
    """runs/<name>, by default the recipe's stem and a timestamp; never an existing folder."""
    name = recipe.train.name or f"{Path(recipe_path).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(recipe.train.out_dir) / name
    if run_dir.exists():
        raise FastltError(f"{run_dir}: run folder exists already (use --resume to continue it, or another name)")
    return run_dir


def build_run_state(recipe: Recipe, device: torch.device, data: TrainingData, scale_loss: bool) -> RunState:
    """Seeded model (channels_last), SGD optimiser, loss scaler and the run's two generators."""
    seed = recipe.train.seed
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    method = build_method(recipe, data.part_size, data.sample_groups).to(device)
    memory_format = torch.channels_last if recipe.train.channels_last else torch.contiguous_format
    method = method.to(memory_format=memory_format)
    o = recipe.optim
    optimizer = torch.optim.SGD(
        parameter_groups(method, o.weight_decay, o.exclude_bn_bias), lr=o.lr, momentum=o.momentum,
        foreach=device.type == "cuda" or None,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=scale_loss)
    return RunState(method, optimizer, scaler, data.generator, torch.Generator(device).manual_seed(seed + 1))


def pretrain(
    recipe: Recipe, recipe_path: str = "<recipe>", resume: Path | None = None, until_epoch: int | None = None
) -> Path:
    """Train the recipe's method; with ``resume`` (a run folder) continue that run. Returns the run folder.

    until_epoch stops early after that epoch (the schedule still spans train.epochs), for
    time-limited jobs: ``resume`` later continues exactly where it stopped.
    """
    device = resolve_device(recipe.train.device)
    precision = resolve_precision(recipe.train.precision, device)
    data = load_training_data(recipe, device, torch.Generator(device).manual_seed(recipe.train.seed))
    state = build_run_state(recipe, device, data, precision.scale_loss)
    if resume is not None:
        run_dir = resume
        restore(state, run_dir / CHECKPOINT_NAME)
        write_json_atomic(run_dir / "config.json", recipe.to_dict())  # overrides such as a longer schedule
    else:
        run_dir = new_run_dir(recipe, recipe_path)
        run_dir.mkdir(parents=True)
        write_json_atomic(run_dir / "config.json", recipe.to_dict())
        write_json_atomic(run_dir / "run.json", run_record(device, recipe.train.seed, recipe_path))
    if resolve_compile(recipe.train.compile, device):
        state.method.enable_compile()

    scaler = state.scaler
    context = StepContext(autocast=precision.autocast(device), backward=lambda loss: scaler.scale(loss).backward())
    last_epoch = min(recipe.train.epochs, until_epoch or recipe.train.epochs)
    for epoch in range(state.epoch + 1, last_epoch + 1):
        record = train_one_epoch(state, data.loader, context, recipe, epoch)
        save_checkpoint(run_dir / CHECKPOINT_NAME, checkpoint_payload(state, recipe))
        with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        if recipe.train.progress:
            tqdm.write(f"epoch {epoch}: loss {record['loss']:.4f}  {record['images_per_second']:.0f} img/s  "
                       f"lr {record['lr']:.4g}")
    return run_dir


def train_one_epoch(
    state: RunState, loader: NativeLoader, context: StepContext, recipe: Recipe, epoch: int
) -> dict[str, Any]:
    """One pass over the loader; returns the epoch's metrics record.

    The loss accumulates on the device and is read every ``train.log_every`` steps for the
    progress bar and once at the end, so steps do not wait on the host.
    """
    method, optimizer, o = state.method, state.optimizer, recipe.optim
    total_steps = recipe.train.epochs * len(loader)
    warmup_steps = round(o.warmup_epochs * len(loader))
    images_per_epoch = len(loader) * recipe.train.batch_size if recipe.train.drop_last else loader.num_samples
    method.train()
    method.on_epoch_start(epoch)
    loss_sum = torch.zeros((), device=state.data_generator.device)
    started = time.perf_counter()
    bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{recipe.train.epochs}", unit="step",
               disable=not recipe.train.progress, leave=False, dynamic_ncols=True)
    for batch_index, batch in enumerate(loader):
        lr = warmup_cosine_lr(state.step, total_steps, warmup_steps, o.lr, o.final_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        output = method.train_step(batch, state.view_generator, context)
        state.scaler.step(optimizer)
        state.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += output.loss
        state.step += 1
        bar.update(1)
        if (batch_index + 1) % recipe.train.log_every == 0:
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{loss_sum.item() / (batch_index + 1):.4f}",
                            img_s=f"{(batch_index + 1) * recipe.train.batch_size / elapsed:.0f}")
    bar.close()
    elapsed = time.perf_counter() - started
    state.epoch = epoch
    return {
        "epoch": epoch,
        "step": state.step,
        "loss": loss_sum.item() / max(len(loader), 1),
        "lr": optimizer.param_groups[0]["lr"],
        "epoch_seconds": round(elapsed, 3),
        "images_per_second": round(images_per_epoch / elapsed, 1),
        **method.on_epoch_end(epoch),
    }


def checkpoint_payload(state: RunState, recipe: Recipe) -> dict[str, Any]:
    """Model, optimiser, scaler, counters and every RNG state, so a resume continues exactly."""
    rng = {
        "data": state.data_generator.get_state(),
        "views": state.view_generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "recipe": recipe.to_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "model": state.method.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "rng": rng,
    }


def restore(state: RunState, path: Path) -> None:
    """Load a checkpoint written by ``checkpoint_payload`` into a freshly built run state."""
    payload = load_checkpoint(path)
    load_model_state(state.method, payload["model"], path)
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scaler.load_state_dict(payload["scaler"])
    rng = payload["rng"]
    state.data_generator.set_state(rng["data"])
    state.view_generator.set_state(rng["views"])
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state.epoch = payload["epoch"]
    state.step = payload["step"]


def load_run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved recipe a run was started with (its config.json), as a raw dict."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise FastltError(f"{run_dir}: not a fastlt run folder (no config.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise FastltError(f"{path}: unreadable run config ({error})") from None
    if not isinstance(raw, dict):
        raise FastltError(f"{path}: run config is not a table")
    return raw


