"""A run as its checkpoint holds it, and back: the payload, every rank's random streams, the hardware a resume
keeps, and the restore."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fastlt.checkpoint import load_model_state
from fastlt.errors import FastltError
from fastlt.hardware import (
    compile_usable,
    memory_format_hazard,
    resolve_compile,
    resolve_device,
    resolve_memory_format,
    resolve_view_compile,
    use_cudnn_benchmark,
)
from fastlt.progress import say
from fastlt.recipe import Recipe
from fastlt.train.distributed import launched_ranks
from fastlt.train.run_state import HardwareChoices, PartialEpoch, RunState


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
