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
(fastlt.train.monitor); with ``train.tensorboard`` every record also goes to RUN/tensorboard, and with
``train.wandb`` to the run's Weights & Biases run (fastlt.wandb_log).
"""
from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch

from fastlt.checkpoint import CheckpointSchedule, CheckpointWriter, load_run_checkpoint
from fastlt.data.loader import Loader, batch_bounds, shard_bounds
from fastlt.data.store import check_same_data
from fastlt.errors import FastltError
from fastlt.files import write_json_atomic
from fastlt.hardware import compile_mode, resolve_device
from fastlt.methods import StepContext
from fastlt.progress import Progress, say
from fastlt.recipe import Override, Recipe, recipe_from_dict, recipe_with_overrides
from fastlt.train.distributed import backend_name, decided_by_main, gather_to_all, join, launched_ranks, leave
from fastlt.train.monitor import TensorBoardLog
from fastlt.train.resume import check_recipe_change
from fastlt.train.run_folder import (
    append_metrics,
    checkpoint_bytes,
    keep_metrics_until,
    make_run_dir,
    new_run_dir,
    run_started,
)
from fastlt.train.run_state import (
    HardwareChoices,
    PartialEpoch,
    RunState,
    TrainingData,
    build_run_state,
    check_watchers,
    choose_hardware,
    load_training_data,
    precision_of,
    process_device,
    seeded_method,
)
from fastlt.train.runinfo import run_record
from fastlt.train.schedule import peak_lr, warmup_cosine_lr
from fastlt.train.snapshot import checkpoint_payload, own_generator_states, recorded_hardware, restore, resume_device
from fastlt.train.stopping import StopRequest, stop_now, stopped
from fastlt.wandb_log import WandbLog


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


def resume_run(run_dir: Path, overrides: Sequence[str | Override] = (), until_epoch: int | None = None) -> Path:
    """Continue a run from its last checkpoint with the choices it recorded; refuse changes to its history."""
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
            say(f"{run_dir}: resuming at epoch {epochs_done + 1} of "
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
    logs = metrics_logs(recipe, run_dir, state.epoch, choices) if main else []
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
                for log in logs:
                    log.write(record)
                progress.end_epoch(record)
                if stopping and epoch < last_epoch:
                    writer.wait()
                    raise stopped(run_dir, stop.signal or signal.SIGTERM, f"the end of epoch {epoch}")
    finally:
        for log in logs:
            log.close()


def metrics_logs(recipe: Recipe, run_dir: Path, epochs_done: int,
                 choices: HardwareChoices) -> list[TensorBoardLog | WandbLog]:
    """Where the main process sends each metrics record besides metrics.jsonl: the recipe's optional loggers."""
    logs: list[TensorBoardLog | WandbLog] = []
    if recipe.train.tensorboard:
        logs.append(TensorBoardLog(run_dir, epochs_done))
    if recipe.train.wandb:
        logs.append(WandbLog(run_dir, recipe, asdict(choices)))
    return logs


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
