"""What a run holds while it trains (model, optimiser, scaler, generators, position) and how it is built from a
recipe: the data on the device, the method, and the hardware choices ``auto`` resolves."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastlt.data.backends import make_loader
from fastlt.data.loader import Loader
from fastlt.data.splits import (
    GROUP_NAMES,
    class_counts,
    class_groups,
    empty_classes,
    name_classes,
    split_checksum,
    split_or_all,
)
from fastlt.data.store import Store
from fastlt.errors import FastltError
from fastlt.hardware import (
    PRECISION_TYPES,
    Precision,
    resolve_compile,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
    resolve_view_compile,
    sgd_kernel,
    use_cudnn_benchmark,
)
from fastlt.methods import ContrastiveMethod, build_method
from fastlt.recipe import OptimConfig, Recipe, with_store_lists
from fastlt.train.distributed import Ranks, StopVote, launched_ranks
from fastlt.train.lars import Lars
from fastlt.train.monitor import Monitor, require_tensorboard
from fastlt.wandb_log import require_wandb


@dataclass(frozen=True)
class HardwareChoices:
    """What ``auto`` resolved to when the run started; a resume reuses it, whatever this machine would pick."""

    device: str  # device type: cpu | cuda
    precision: str
    memory_format: str
    compile: bool
    compile_views: bool
    batch_size: int  # the global batch
    reasons: dict[str, str]
    processes: int = 1  # torchrun's WORLD_SIZE when the run started (or last resumed)


@dataclass(frozen=True)
class PartialEpoch:
    """Where a stopped epoch stopped: what its resume needs to finish it as if nothing had happened."""

    epoch: int
    batches: int  # batches done
    loss_sum: float  # the float32 sum of their losses
    seconds: float  # time spent on them
    data_rng: torch.Tensor  # the data generator's state at the epoch's start: the same permutation again


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
    partial: PartialEpoch | None = None  # the epoch a signal stopped, until it is finished
    ranks: Ranks = Ranks()  # this process's place among the run's processes
    rank_rng: list[dict[str, torch.Tensor]] = field(default_factory=list)  # every rank's, at the last gather
    vote: StopVote = field(default_factory=StopVote)  # the ranks' agreement on a stop


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool,
                     excluded: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One group, or two when BN parameters and biases (all 1-D tensors) are excluded from decay; the
    excluded group also takes the optimiser options in ``excluded`` (LARS: no trust ratio)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bn_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decayed = [p for p in params if p.ndim > 1]
    undecayed = [p for p in params if p.ndim <= 1]
    return [{"params": decayed, "weight_decay": weight_decay},
            {"params": undecayed, "weight_decay": 0.0, **(excluded or {})}]


def build_optimizer(model: nn.Module, o: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD in the device's kernel (``sgd_kernel``, also after loading a checkpoint), or fastlt's LARS (LoTaR's and
    FlatCLR's; excluded batch norm and biases take no trust ratio)."""
    if o.name == "lars":
        groups = parameter_groups(model, o.weight_decay, o.exclude_bn_bias, {"adapt": False})
        return Lars(groups, lr=o.lr, momentum=o.momentum, eta=o.lars_trust, denominator=o.lars_denominator)
    groups = parameter_groups(model, o.weight_decay, o.exclude_bn_bias)
    kernel = sgd_kernel(device)
    optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, **kernel)

    def keep_kernel(loaded: torch.optim.Optimizer) -> None:
        """A checkpoint's groups carry the kernel they were saved with; this device's is the one to run."""
        for group in loaded.param_groups:
            group.update(kernel)

    optimizer.register_load_state_dict_post_hook(keep_kernel)
    return optimizer


@dataclass(frozen=True)
class TrainingData:
    """The resident loader, the size of the store part, each sample's class group, what the data is, and the
    held-out monitor (None when ``train.monitor_every`` is 0)."""

    loader: Loader
    generator: torch.Generator  # the loader's: batch order
    part_size: int
    sample_groups: torch.Tensor  # [part_size] int8: 0 many, 1 medium, 2 few, -1 not in the split
    identity: dict[str, Any]  # store name, part, count, classes, checksums, split checksum
    monitor: Monitor | None = None


def load_training_data(recipe: Recipe, device: torch.device, generator: torch.Generator,
                       ranks: Ranks = Ranks()) -> TrainingData:
    """Open the store, apply the split, and put the training images (and, on rank 0, the monitor's) on the
    device once; each rank's loader yields its share of every global batch."""
    store = Store.open(Path(recipe.data.store))
    recipe = with_store_lists(recipe, store.list_file)
    part = store.part(recipe.data.part)
    labels = np.asarray(part.labels)
    indices = split_or_all(recipe.data.split, len(labels))
    counts = class_counts(indices, labels, store.num_classes)
    empty = empty_classes(counts)
    if empty:  # its many / medium / few groups would hold classes never seen, and no probe could learn them
        where = recipe.data.split or f"{recipe.data.store} (part {recipe.data.part})"
        raise FastltError(f"{where}: {name_classes(empty)} {'have' if len(empty) > 1 else 'has'} no sample in the "
                          f"{'split' if recipe.data.split else 'part'}")
    if recipe.train.batch_size > len(indices):  # contrastive negatives come from the batch: surely a mistake
        raise FastltError(f"train.batch_size {recipe.train.batch_size}: larger than the {len(indices)} samples of "
                          "the split; lower it")
    if recipe.train.batch_size < 2 * ranks.world:  # batch norm cannot train on one sample
        raise FastltError(f"train.batch_size {recipe.train.batch_size}: fewer than 2 samples for each of the "
                          f"{ranks.world} processes")
    loader = make_loader(store, recipe.data.part, indices, recipe.train.batch_size, device, generator,
                         shuffle=True, drop_last=recipe.train.drop_last, shard=(ranks.rank, ranks.world))
    groups = class_groups(counts, recipe.eval.groups)
    group_of_class = np.full(store.num_classes, -1, dtype=np.int8)
    for code, name in enumerate(GROUP_NAMES):
        group_of_class[groups[name]] = code
    sample_groups = np.full(len(labels), -1, dtype=np.int8)
    sample_groups[indices] = group_of_class[labels[indices]]
    identity = {**store.identity(recipe.data.part), "split_sha256": split_checksum(indices)}
    monitor = Monitor.for_recipe(recipe, part, indices, store.num_classes, groups, device) if ranks.main else None
    return TrainingData(loader, generator, len(labels), torch.from_numpy(sample_groups).to(device), identity,
                        monitor)

SYNC_BN_UNCOMPILED = ("off: train.sync_bn's SyncBatchNorm runs collectives inside the step, and fastlt has not "
                      "verified them under torch.compile (SyncBatchNorm needs CUDA)")


def choose_hardware(recipe: Recipe, method: nn.Module, split_size: int) -> HardwareChoices:
    """Resolve device, precision, memory format and compile for a new run on this machine
    (``split_size`` training images an epoch, which tells whether compiling the views repays itself)."""
    t = recipe.train
    device = resolve_device(t.device)
    precision = resolve_precision(t.precision, device)
    memory_format, format_why = resolve_memory_format(t.memory_format, device, method)
    compiled, compile_why = resolve_compile(t.compile, device)
    if compiled and t.compile == "auto" and t.sync_bn and launched_ranks().active:
        compiled, compile_why = False, SYNC_BN_UNCOMPILED
    compile_views, views_why = resolve_view_compile(t.compile_views, device, t.epochs * split_size)
    reasons = {"precision": precision.reason, "memory_format": format_why, "compile": compile_why,
               "compile_views": views_why, "cudnn_benchmark": use_cudnn_benchmark(device)}
    return HardwareChoices(device.type, precision.name, memory_format, compiled, compile_views, t.batch_size, reasons,
                           launched_ranks().world)


def process_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per process: cuda (auto or without an index) becomes cuda:LOCAL_RANK under torchrun; a named
    index is refused there (every rank would take the same GPU)."""
    if ranks.active and device.type == "cuda":
        if device.index is not None:
            raise FastltError(f"train.device {device}: under torchrun each process takes cuda:LOCAL_RANK; set "
                              "train.device to cuda or auto, and choose the GPUs with CUDA_VISIBLE_DEVICES")
        return torch.device("cuda", ranks.local_rank)
    return device


def precision_of(choices: HardwareChoices) -> Precision:
    dtype, scale_loss = PRECISION_TYPES[choices.precision]
    return Precision(choices.precision, dtype, scale_loss, choices.reasons.get("precision", ""))


def build_run_state(recipe: Recipe, data: TrainingData, choices: HardwareChoices, method: ContrastiveMethod,
                    ranks: Ranks = Ranks()) -> RunState:
    """The method in its memory format, SGD, the loss scaler and the run's two generators (the views' one
    seeded per rank: each rank augments its own share)."""
    device = data.generator.device
    method = method.to(device)
    method.set_memory_format(choices.memory_format)
    if ranks.active and recipe.train.sync_bn:
        if device.type != "cuda":
            raise FastltError("train.sync_bn: torch's SyncBatchNorm runs on CUDA only")
        if choices.compile:
            raise FastltError(f"train.sync_bn with train.compile: {SYNC_BN_UNCOMPILED}; set train.compile=off")
        nn.SyncBatchNorm.convert_sync_batchnorm(method)  # in place, the same parameters and statistics
    optimizer = build_optimizer(method, recipe.optim, device)
    scaler = torch.amp.GradScaler(device.type, enabled=PRECISION_TYPES[choices.precision][1])
    view_generator = torch.Generator(device).manual_seed(recipe.train.seed + 1 + ranks.rank)
    return RunState(method, optimizer, scaler, data.generator, view_generator, ranks=ranks)


def seeded_method(recipe: Recipe, data_size: int, sample_groups: torch.Tensor | None = None) -> ContrastiveMethod:
    """The recipe's method with the run's seeded initialisation (on the CPU)."""
    torch.manual_seed(recipe.train.seed)
    return build_method(recipe, data_size, sample_groups.cpu() if sample_groups is not None else None)


def check_watchers(recipe: Recipe, data: TrainingData, method: ContrastiveMethod) -> None:
    """What the monitor, TensorBoard and W&B need, checked before anything is written: the eval.exit, the packages."""
    if data.monitor is not None:
        method.feature_extractor(data.monitor.exit)  # a one-line error for an exit the method lacks
    if recipe.train.tensorboard:
        require_tensorboard()
    if recipe.train.wandb:
        require_wandb()
