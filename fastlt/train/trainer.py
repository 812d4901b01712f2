"""The pretraining loop: resident data, device-side views, AMP, checkpoints, logs, honest resume.

One run = one folder: config.json (the resolved recipe), run.json (seed, commit, versions,
device, the hardware choices and why, every resume), metrics.jsonl (one line per epoch)
and checkpoints/last.pt (with previous.pt and milestones, fastlt.checkpoint), written
atomically in the background at the epoch ends ``train.checkpoint_minutes`` or
``train.checkpoint_every`` call for, at milestones, at the last epoch, and when SIGINT or SIGTERM
stops the run (fastlt.train.stopping). An epoch's metrics line is written before
its checkpoint, and a resume drops the lines after the checkpoint's epoch, so the two never
disagree whenever the process dies. ``resume_run`` continues a run exactly, also from the
middle of an epoch: model, optimiser, loss scaler, method state (e.g. BCL memory), every RNG
and the hardware choices recorded at the start. With
``train.monitor_every`` an epoch's record also holds the held-out kNN accuracy
(fastlt.train.monitor); with ``train.tensorboard`` every record also goes to RUN/tensorboard.
"""
from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from fastlt.data.backends import make_loader
from fastlt.data.loader import Loader, batch_bounds, shard_bounds
from fastlt.data.splits import (
    GROUP_NAMES,
    class_counts,
    class_groups,
    empty_classes,
    name_classes,
    split_checksum,
    split_or_all,
)
from fastlt.data.store import Store, check_same_data
from fastlt.errors import FastltError, RunStopped
from fastlt.files import remove_temporaries, write_json_atomic, write_text_atomic
from fastlt.progress import Progress, say
from fastlt.methods import ContrastiveMethod, StepContext, build_method
from fastlt.recipe import OptimConfig, Override, Recipe, recipe_from_dict, recipe_with_overrides, with_store_lists
from fastlt.checkpoint import (
    CHECKPOINTS,
    LAST,
    PREVIOUS,
    CheckpointSchedule,
    CheckpointWriter,
    load_model_state,
    load_run_checkpoint,
)
from fastlt.train.distributed import (
    Ranks,
    StopVote,
    backend_name,
    decided_by_main,
    gather_to_all,
    join,
    launched_ranks,
    leave,
)
from fastlt.hardware import (
    PRECISION_TYPES,
    Precision,
    compile_mode,
    compile_usable,
    memory_format_hazard,
    resolve_compile,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
    resolve_view_compile,
    sgd_kernel,
    use_cudnn_benchmark,
)
from fastlt.train.monitor import TENSORBOARD_FOLDER, Monitor, TensorBoardLog, require_tensorboard
from fastlt.train.resume import check_recipe_change
from fastlt.train.runinfo import run_record
from fastlt.train.lars import Lars
from fastlt.train.schedule import peak_lr, warmup_cosine_lr
from fastlt.train.stopping import StopRequest

CHECKPOINT_NAME = f"{CHECKPOINTS}/{LAST}"
ROOM_FACTOR = 3  # checkpoints on disk at once while one is written: last, previous and the new one


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


def new_run_dir(recipe: Recipe, recipe_path: str, restart_unstarted: bool = False) -> Path:
    """runs/<name>, by default the recipe's stem and a timestamp; never an existing folder, except, with
    ``restart_unstarted``, one a killed start left before its first checkpoint (its files are fastlt's own)."""
    name = recipe.train.name or f"{Path(recipe_path).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(recipe.train.out_dir) / name
    if run_dir.exists() and restart_unstarted:
        remove_unstarted_run(run_dir)
    if run_dir.exists():
        raise FastltError(f"{run_dir}: run folder exists already (use --resume to continue it, or another name)")
    return run_dir


RUN_FILES = ("config.json", "run.json", "metrics.jsonl", CHECKPOINTS, TENSORBOARD_FOLDER)  # all a run writes


def run_started(run_dir: Path) -> bool:
    """Whether the run folder holds a checkpoint to resume from (last.pt, or previous.pt after a failed rename)."""
    folder = Path(run_dir) / CHECKPOINTS
    return (folder / LAST).is_file() or (folder / PREVIOUS).is_file()


def remove_unstarted_run(run_dir: Path) -> None:
    """Delete a run folder that has no checkpoint, if it holds nothing but what fastlt writes in a run (else a
    one-line refusal: nothing a user put there is deleted)."""
    if not run_dir.is_dir():
        return
    foreign = [path.name for path in run_dir.iterdir() if path.name not in RUN_FILES]
    checkpoints = run_dir / CHECKPOINTS
    if checkpoints.is_dir():
        remove_temporaries(checkpoints)
        foreign += [f"{CHECKPOINTS}/{path.name}" for path in checkpoints.iterdir()]
    if foreign:
        raise FastltError(f"{run_dir}: has no checkpoint to resume, and holds {foreign[0]}, which a run does not "
                          "write; move it away or choose another train.name")
    say(f"{run_dir}: no checkpoint yet (stopped before its first); starting the run again")
    shutil.rmtree(run_dir)


def pretrain_or_resume(recipe: Recipe, recipe_path: str, overrides: Sequence[str | Override] = (),
                       until_epoch: int | None = None) -> Path:
    """Resume the recipe's named run if it has a checkpoint, else start it: one command line that a launcher
    may run again after a failure (torchrun --max-restarts, a Slurm requeue), however far the last try got.

    Every process decides before any of them joins the group, so before any can create the folder.
    """
    if not recipe.train.name:
        raise FastltError("--resume-if-exists: the run needs a fixed name to be found again; add "
                          "--set train.name=NAME")
    run_dir = Path(recipe.train.out_dir) / recipe.train.name
    if run_started(run_dir):
        return resume_run(run_dir, overrides, until_epoch)
    return pretrain(recipe, recipe_path, until_epoch, restart_unstarted=True)


def checkpoint_bytes(state: RunState) -> int:
    """About the size of one checkpoint: the method's tensors and the optimiser's one buffer per parameter."""
    tensors = list(state.method.state_dict().values()) + [p for p in state.method.parameters() if p.requires_grad]
    return sum(t.numel() * t.element_size() for t in tensors)


def make_run_dir(run_dir: Path, checkpoint_size: int) -> None:
    """Create the run folder, refusing one that cannot be written or a disk without room for the
    checkpoints, before any training."""
    try:
        run_dir.mkdir(parents=True)
    except OSError as error:
        raise FastltError(f"{run_dir}: cannot create the run folder ({error.strerror or error})") from None
    needed, free = ROOM_FACTOR * checkpoint_size, shutil.disk_usage(run_dir).free
    if free < needed:
        run_dir.rmdir()
        raise FastltError(f"{run_dir.parent}: {free / 2**20:.0f} MiB free, and the run needs about "
                          f"{needed / 2**20:.0f} MiB for its checkpoints (train.out_dir elsewhere?)")


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


def resume_device(recipe: Recipe, recorded: dict[str, Any], where: str) -> torch.device:
    """The recorded device type (``auto``), or the one the recipe names if it is of that type."""
    if recipe.train.device == "auto":
        if recorded["device"] == "cuda" and not torch.cuda.is_available():
            raise FastltError(f"{where}: the run trained on CUDA and no CUDA device is available here")
        return torch.device(recorded["device"])
    device = resolve_device(recipe.train.device)
    if device.type != recorded["device"]:
        raise FastltError(f"{where}: the run trained on {recorded['device']}; resuming on {device.type} "
                          "would change its precision and kernels (set train.device accordingly)")
    return device


def recorded_hardware(recipe: Recipe, recorded: dict[str, Any], device: torch.device, method: nn.Module,
                      where: str) -> HardwareChoices:
    """The checkpoint's hardware choices, where this machine can honour them; else a one-line refusal."""
    reasons = {"precision": "recorded at the start of the run", "cudnn_benchmark": use_cudnn_benchmark(device)}
    memory_format, hazard = recorded["memory_format"], memory_format_hazard(method, device)
    if recipe.train.memory_format != "auto":
        memory_format, reasons["memory_format"] = resolve_memory_format(recipe.train.memory_format, device, method)
    elif memory_format == "channels_last" and hazard:
        memory_format, reasons["memory_format"] = "contiguous", f"the recorded channels_last is unsafe here: {hazard}"
        say(f"warning: {where}: resuming in contiguous memory, {reasons['memory_format']}")
    else:
        reasons["memory_format"] = "recorded at the start of the run"
    compiled = recorded_compile("train.compile", recipe.train.compile, recorded["compile"], where,
                                lambda name: resolve_compile(name, device), reasons)
    # Runs from before the views could compile made them eagerly.
    compile_views = recorded_compile("train.compile_views", recipe.train.compile_views,
                                     recorded.get("compile_views", False), where,
                                     lambda name: resolve_view_compile(name, device, 0), reasons)
    return HardwareChoices(device.type, recorded["precision"], memory_format, compiled, compile_views,
                           recorded["batch_size"], reasons, launched_ranks().world)


def recorded_compile(key: str, requested: str, recorded: bool, where: str,
                     resolve: Callable[[str], tuple[bool, str]], reasons: dict[str, str]) -> bool:
    """A compile choice on resume: the recipe's when it is not auto, else the recorded one if this
    machine can compile; the reason goes into ``reasons``."""
    name = key.split(".")[1]
    if requested != "auto":
        compiled, reasons[name] = resolve(requested)
        return compiled
    if recorded and not compile_usable()[0]:
        raise FastltError(f"{where}: the run was compiled ({key}) and torch.compile is not usable here "
                          f"({compile_usable()[1]}); resume with --set {key}=off")
    reasons[name] = "recorded at the start of the run"
    return recorded


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
    """What the monitor and TensorBoard need, checked before anything is written: the eval.exit, the package."""
    if data.monitor is not None:
        method.feature_extractor(data.monitor.exit)  # a one-line error for an exit the method lacks
    if recipe.train.tensorboard:
        require_tensorboard()


def pretrain(recipe: Recipe, recipe_path: str = "<recipe>", until_epoch: int | None = None,
             restart_unstarted: bool = False) -> Path:
    """Start a new run of the recipe's method; returns the run folder.

    until_epoch stops early after that epoch (the schedule still spans train.epochs), for
    time-limited jobs: ``resume_run`` later continues exactly where it stopped. ``restart_unstarted``: a folder
    of the same name without a checkpoint is a start that died early, replaced (``pretrain_or_resume``).
    """
    ranks = launched_ranks()
    device = process_device(resolve_device(recipe.train.device), ranks)
    join(ranks, device)
    try:
        data = load_training_data(recipe, device, torch.Generator(device).manual_seed(recipe.train.seed), ranks)
        method = seeded_method(recipe, data.part_size, data.sample_groups)
        check_watchers(recipe, data, method)
        choices = choose_hardware(recipe, method, data.loader.num_samples)
        state = build_run_state(recipe, data, choices, method, ranks)
        run_dir = Path(decided_by_main(lambda: str(new_run_dir(recipe, recipe_path, restart_unstarted))))  # rank 0's name
        if ranks.main:
            warn_all_warmup(recipe)
            make_run_dir(run_dir, checkpoint_bytes(state))
            write_json_atomic(run_dir / "config.json", recipe.to_dict())
            record = run_record(device, recipe.train.seed, recipe_path)
            distributed = {"distributed": {"world": ranks.world, "backend": backend_name()}} if ranks.active else {}
            write_json_atomic(run_dir / "run.json", {**record, **distributed, "hardware": asdict(choices),
                                                     "data": data.identity, "resumes": []})
        train_epochs(state, data, recipe, choices, run_dir, until_epoch)
        leave(finished=True)
    finally:
        leave()
    return run_dir


def warn_all_warmup(recipe: Recipe) -> None:
    """One line when the warm-up spans the whole schedule (a run cut shorter than its warm-up): the lr only rises
    and never decays, so the run is not the recipe's schedule at fewer epochs."""
    warmup, epochs = recipe.optim.warmup_epochs, recipe.train.epochs
    if warmup >= epochs:
        say(f"warning: optim.warmup_epochs {warmup:g} >= train.epochs {epochs}: the whole run is the lr's linear "
            f"warm-up, which peaks at the end at best and never decays; give fewer with --set "
            f"optim.warmup_epochs=N (N < {epochs})")


def resume_run(run_dir: Path, overrides: Sequence[str | Override] = (), until_epoch: int | None = None,
               continuing: bool = False) -> Path:
    """Continue a run from its last checkpoint with the choices it recorded; refuse changes to its history.

    ``continuing``: this process started the run and carries on after an ``until_epoch`` (reproduce's timing
    epoch), so the line says "continuing" rather than "resuming"."""
    checkpoint, payload = load_run_checkpoint(run_dir, say)
    recipe = recipe_with_overrides(json.loads(json.dumps(payload["recipe"])), overrides, str(checkpoint))
    where = f"{run_dir}"
    # Through the recipe's own defaults, so a key added since the checkpoint was written compares equal.
    recorded = recipe_from_dict(json.loads(json.dumps(payload["recipe"])), str(checkpoint)).to_dict()
    check_recipe_change(recorded, recipe.to_dict(), payload["epoch"], where)
    epochs_done = payload["epoch"]
    if epochs_done >= recipe.train.epochs:
        say(f"{run_dir}: run already complete (epoch {epochs_done} of {recipe.train.epochs})")
        return run_dir
    if until_epoch is not None and until_epoch <= epochs_done:
        raise FastltError(f"--until-epoch {until_epoch}: {run_dir} has completed {epochs_done} epochs already")
    ranks = launched_ranks()
    device = process_device(resume_device(recipe, payload["hardware"], where), ranks)
    if "position" in payload and payload["hardware"].get("processes", 1) != ranks.world:
        raise FastltError(f"{where}: stopped inside epoch {payload['position']['epoch']} with "
                          f"{payload['hardware'].get('processes', 1)} processes; finish that epoch with as many")
    join(ranks, device)
    try:
        data = load_training_data(recipe, device, torch.Generator(device).manual_seed(recipe.train.seed), ranks)
        check_same_data(payload["data"], data.identity, f"{where}: data.store {recipe.data.store}")
        method = seeded_method(recipe, data.part_size, data.sample_groups)
        check_watchers(recipe, data, method)
        choices = recorded_hardware(recipe, payload["hardware"], device, method, where)
        state = build_run_state(recipe, data, choices, method, ranks)
        restore(state, payload, checkpoint)
        if ranks.main:
            within = f", batch {state.partial.batches + 1} of {len(data.loader)}" if state.partial is not None else ""
            say(f"{run_dir}: {'continuing' if continuing else 'resuming'} at epoch {epochs_done + 1} of "
                f"{recipe.train.epochs}{within}")
            keep_metrics_until(run_dir / "metrics.jsonl", epochs_done)
            write_json_atomic(run_dir / "config.json", recipe.to_dict())
            record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
            record.setdefault("resumes", []).append({
                "command": sys.argv, "from_epoch": epochs_done, "epochs": recipe.train.epochs,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hardware": asdict(choices),
            })
            write_json_atomic(run_dir / "run.json", record)
        train_epochs(state, data, recipe, choices, run_dir, until_epoch)
        leave(finished=True)
    finally:
        leave()
    return run_dir


def keep_metrics_until(path: Path, epoch: int) -> None:
    """Drop metrics lines of epochs after the checkpoint (they will be run again), and a last line a killed
    write cut short, atomically."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not text.endswith("\n"):
        lines.pop()  # torn: the process died inside the append
    kept = [line for line in lines if json.loads(line)["epoch"] <= epoch]
    if kept != lines or not text.endswith("\n"):
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def train_epochs(state: RunState, data: TrainingData, recipe: Recipe, choices: HardwareChoices, run_dir: Path,
                 until_epoch: int | None) -> None:
    """Epochs from the state's next one to train.epochs (or until_epoch), checkpointing as the recipe says."""
    device = data.generator.device
    main = state.ranks.main
    if state.ranks.active:
        state.method.enable_distributed(device)
    if choices.compile:
        state.method.enable_compile(compile_mode(recipe.train.compile, device))
    if choices.compile_views:
        state.method.views.enable_compile()
    scaler = state.scaler
    context = StepContext(autocast=precision_of(choices).autocast(device),
                          backward=lambda loss: scaler.scale(loss).backward())
    if state.ranks.active:
        start, end = batch_bounds(data.loader.num_samples, recipe.train.batch_size, recipe.train.drop_last,
                                  state.ranks.world)[0]
        shards = tuple(last - first for first, last in shard_bounds(end - start, state.ranks.world))
        state.method.settle_gradient_buckets(shards, state.ranks.rank, context)
    last_epoch = min(recipe.train.epochs, until_epoch or recipe.train.epochs)
    monitor = data.monitor
    progress = Progress(recipe.train.progress and main, recipe.train.epochs, last_epoch,
                        monitor.epochs(state.epoch + 1, last_epoch) if monitor else (),
                        monitor.label if monitor else "kNN")
    tensorboard = TensorBoardLog(run_dir, state.epoch) if recipe.train.tensorboard and main else None
    keep_every = recipe.train.keep_every
    # Every rank keeps the schedule (its saved_epoch is what a non-finite loss reports); rank 0 writes.
    schedule = CheckpointSchedule(recipe.train.checkpoint_every, recipe.train.checkpoint_minutes, state.epoch)
    held = 0.0  # seconds the last checkpoint's hand-over held the loop: the next epoch's time counts them
    try:
        with StopRequest() as stop, CheckpointWriter(say) as writer:
            for epoch in range(state.epoch + 1, last_epoch + 1):
                record = train_one_epoch(state, data.loader, context, recipe, epoch, progress, stop,
                                         saved_epoch=schedule.saved_epoch, held_seconds=held)
                state.rank_rng = gather_to_all(own_generator_states(state))  # what a checkpoint now would hold
                if record is None:  # a signal stopped the epoch: keep where it stopped
                    if main:
                        writer.submit(run_dir, checkpoint_payload(state, recipe, choices, data.identity))
                        writer.wait()
                    raise stopped(run_dir, stop.signal or signal.SIGTERM,
                                  f"epoch {epoch}, after batch {state.partial.batches}")
                if monitor is not None and monitor.due(epoch):
                    record |= monitor.measure(state.method, precision_of(choices).dtype)
                stopping = state.vote.settle(stop.requested)  # every rank stops after the same epoch
                if main:
                    append_metrics(run_dir / "metrics.jsonl", record)  # before the checkpoint: the module's text
                milestone = keep_every > 0 and epoch % keep_every == 0
                held = 0.0
                if schedule.due(epoch) or milestone or epoch == last_epoch or stopping:
                    if main:
                        held = writer.submit(run_dir, checkpoint_payload(state, recipe, choices, data.identity),
                                             milestone)
                    schedule.saved(epoch)
                if tensorboard is not None:
                    tensorboard.write(record)
                progress.end_epoch(record)
                if stopping and epoch < last_epoch:
                    writer.wait()
                    raise stopped(run_dir, stop.signal or signal.SIGTERM, f"the end of epoch {epoch}")
    finally:
        if tensorboard is not None:
            tensorboard.close()


def stopped(run_dir: Path, signum: int, where: str) -> RunStopped:
    """The exception that ends a run a signal stopped, once its checkpoint is written."""
    name = signal.Signals(signum).name
    return RunStopped(f"{name}: stopped at {where}; checkpoint saved",
                      f"continue with `fastlt pretrain --resume {run_dir}`", signum)


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """One epoch's line; a full disk is a one-line error (the checkpoints are untouched)."""
    try:
        with path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
    except OSError as error:
        raise FastltError(f"{path}: cannot append the epoch's metrics ({error.strerror or error}); "
                          "the checkpoints written before are intact") from None


class NonFiniteLoss:
    """Remembers on the device the first step of an epoch whose loss is NaN or inf (no host sync per step)."""

    def __init__(self, device: torch.device):
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        first = (self.first_step < 0) & ~torch.isfinite(loss)
        self.first_step = torch.where(first, step, self.first_step)
        self.value = torch.where(first, loss.float(), self.value)

    def check(self, epoch: int, steps: int, last_saved: int) -> None:
        """Raise (one line) if any step so far had a non-finite loss; reads one device scalar."""
        step = int(self.first_step)
        if step >= 0:
            kept = f"epoch {last_saved}" if last_saved else "none yet"
            raise FastltError(f"epoch {epoch}, step {step + 1} of {steps}: the loss is {float(self.value)}; "
                              f"stopped before it reached the BCL memory or a checkpoint (last checkpoint: {kept})")


def train_one_epoch(state: RunState, loader: Loader, context: StepContext, recipe: Recipe, epoch: int,
                    progress: Progress, stop: StopRequest | None = None, *, saved_epoch: int,
                    held_seconds: float) -> dict[str, Any] | None:
    """One pass over the loader (the rest of it, for an epoch a signal stopped); returns the epoch's
    metrics record, or None when ``stop`` rose before the last step (``state.partial`` says where).

    The loss accumulates on the device and is read every ``train.log_every`` steps and once
    at the end (with the non-finite check), so steps do not wait on the host. ``saved_epoch``: the
    newest checkpoint's epoch, for the non-finite loss's message. ``held_seconds``: how long handing
    the previous epoch's checkpoint to the writer held the loop, counted in this epoch's time, so
    ``epoch_seconds`` and ``images_per_second`` include checkpointing.
    """
    method, optimizer, o = state.method, state.optimizer, recipe.optim
    steps = len(loader)
    total_steps = recipe.train.epochs * steps
    warmup_steps = round(o.warmup_epochs * steps)
    peak = peak_lr(o.lr, recipe.train.batch_size, o.lr_scaling)
    images_per_epoch = steps * recipe.train.batch_size if recipe.train.drop_last else loader.num_samples
    device = state.data_generator.device
    resumed, state.partial = state.partial, None
    method.train()
    if resumed is None:
        epoch_rng = state.data_generator.get_state()
        done, loss_sum, earlier = 0, torch.zeros((), device=device), held_seconds
        method.on_epoch_start(epoch)
    else:  # the generator is back at the epoch's start (restore), so the loader draws the same order
        epoch_rng = resumed.data_rng
        done, loss_sum, earlier = resumed.batches, torch.tensor(resumed.loss_sum, device=device), resumed.seconds
        method.on_epoch_resume(epoch)
    nonfinite = NonFiniteLoss(device)
    progress.start_epoch(epoch, steps)
    started = time.perf_counter() - earlier
    for batch_index, batch in enumerate(loader):
        if batch_index < done:  # the part of the epoch trained before the stop
            progress.step()
            continue
        lr = warmup_cosine_lr(state.step, total_steps, warmup_steps, peak, o.final_lr, o.lr_step_offset)
        for group in optimizer.param_groups:
            group["lr"] = lr
        output = method.train_step(batch, state.view_generator, context)
        state.scaler.step(optimizer)
        state.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        nonfinite.observe(output.loss, batch_index)
        loss_sum += output.loss
        state.step += 1
        progress.step()
        if (batch_index + 1) % recipe.train.log_every == 0:
            nonfinite.check(epoch, steps, saved_epoch)
            elapsed = time.perf_counter() - started
            progress.reading(batch_index + 1, loss_sum.item() / (batch_index + 1),
                             (batch_index + 1) * recipe.train.batch_size / elapsed)
        if stop is not None and batch_index + 1 < steps and stop_now(stop, state):
            nonfinite.check(epoch, steps, saved_epoch)
            state.partial = PartialEpoch(epoch, batch_index + 1, loss_sum.item(), time.perf_counter() - started,
                                         epoch_rng)
            return None
    nonfinite.check(epoch, steps, saved_epoch)
    elapsed = time.perf_counter() - started
    state.epoch = epoch
    return {
        "epoch": epoch,
        "step": state.step,
        "loss": loss_sum.item() / max(steps, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "epoch_seconds": round(elapsed, 3),
        "images_per_second": round(images_per_epoch / elapsed, 1),
        **method.on_epoch_end(epoch),
    }


def stop_now(stop: StopRequest, state: RunState) -> bool:
    """Whether to stop after this step: at once in one process; with several, every rank stops at the same
    step, at most one step after a signal reached any of them (a launcher's kill grace is far longer)."""
    return state.vote.poll(stop.requested) if state.ranks.active else stop.requested


def own_generator_states(state: RunState) -> dict[str, torch.Tensor]:
    """This rank's own random streams: the views' generator, torch's CPU one and the current CUDA device's."""
    states = {"views": state.view_generator.get_state(), "torch": torch.get_rng_state()}
    if state.data_generator.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(state.data_generator.device)
    return states


def generator_states(state: RunState) -> dict[str, Any]:
    """The RNG states a resume needs: the data generator every rank shares (as it was at the start of a stopped
    epoch) and each rank's own streams, in rank order (``state.rank_rng``, gathered when the epoch or the stop
    came; a state never gathered is one process's, its own)."""
    data = state.partial.data_rng if state.partial is not None else state.data_generator.get_state()
    return {"data": data, "ranks": state.rank_rng or [own_generator_states(state)]}


def checkpoint_payload(state: RunState, recipe: Recipe, choices: HardwareChoices,
                       identity: dict[str, Any]) -> dict[str, Any]:
    """Model, optimiser, scaler, counters, RNG states, hardware choices, data identity and, for a stopped epoch,
    where it stopped: tensors and plain values."""
    partial = state.partial
    position = {} if partial is None else {"position": {"epoch": partial.epoch, "batches": partial.batches,
                                                        "loss_sum": partial.loss_sum, "seconds": partial.seconds}}
    return {
        **position,
        "recipe": recipe.to_dict(),
        "hardware": asdict(choices),
        "data": identity,
        "epoch": state.epoch,
        "step": state.step,
        "model": state.method.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "rng": generator_states(state),
    }


def restore(state: RunState, payload: dict[str, Any], path: Path) -> None:
    """Load a checkpoint written by ``checkpoint_payload`` into a freshly built run state."""
    load_model_state(state.method, payload["model"], path)
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scaler.load_state_dict(payload["scaler"])
    rng = payload["rng"]
    state.data_generator.set_state(rng["data"])
    restore_own_streams(state, rng, payload["recipe"]["train"]["seed"], payload["epoch"])
    state.epoch = payload["epoch"]
    state.step = payload["step"]
    if "position" in payload:
        position = payload["position"]
        state.partial = PartialEpoch(position["epoch"], position["batches"], position["loss_sum"],
                                     position["seconds"], rng["data"])


def restore_own_streams(state: RunState, rng: dict[str, Any], seed: int, epoch: int) -> None:
    """Each rank's own random streams back from the checkpoint. Saved by a different number of processes, they
    cannot be matched to ranks, so every rank derives fresh ones from (seed, rank, epoch): distinct per rank and
    the same on every resume, but not the streams an uninterrupted run would have drawn (said in one line)."""
    ranks = rng.get("ranks") or [{key: rng[key] for key in ("views", "torch", "cuda") if key in rng}]  # version 2
    device = state.data_generator.device
    if len(ranks) == state.ranks.world:
        own = ranks[state.ranks.rank]
        state.view_generator.set_state(own["views"])
        torch.set_rng_state(own["torch"])
        if "cuda" in own and device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"], device)
        return
    if state.ranks.main:
        say(f"note: the checkpoint holds the random streams of {len(ranks)} processes and this run has "
            f"{state.ranks.world}; each process's views continue from new streams seeded by (seed, rank, epoch)")
    views, others = np.random.SeedSequence([seed, state.ranks.rank, epoch]).generate_state(2, dtype=np.uint64)
    state.view_generator.manual_seed(int(views))
    torch.manual_seed(int(others))  # the CPU generator and every CUDA device's
