"""One rank of tests/train/test_distributed.py, started by torchrun: its share of a global batch through the
DDP-wrapped method, and what it computed, saved for the test to compare with one process.

    torchrun --nproc_per_node 2 ddp_ranks.py METHOD[:KEY=VALUE...] SIZE0,SIZE1 OUT_FOLDER [compiled]
"""
from __future__ import annotations

import atexit
import gc
import sys

import torch
import torch.distributed as dist

from fastlt.methods import StepContext, build_method
from fastlt.methods.gather import gather_rows
from fastlt.recipe import recipe_from_dict

WIDTH = 16  # width 4 compiled under the AVX2-restricted kernels corrupted the heap here (docs/development.md)
STEP = StepContext(autocast=lambda: torch.autocast("cpu", enabled=False), backward=lambda loss: loss.backward())


def tiny_method(spec: str):
    """``spec`` is a preset, or PRESET:KEY=VALUE:... with method keys (lotar:view_forward=separate)."""
    name, *settings = spec.split(":")
    method = {"name": name, "pruning_ratio": 0.5}
    for setting in settings:
        key, _, value = setting.partition("=")
        method[key] = int(value) if value.isdigit() else value
    recipe = recipe_from_dict({"model": {"width": WIDTH, "projector_hidden": 16, "projector_out": 8},
                               "views": {"size": 8}, "method": method}, "test")
    torch.manual_seed(0)
    return build_method(recipe, num_samples=64)


def inputs(count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two float views, labels and store indices of a global batch, the same in every process."""
    generator = torch.Generator().manual_seed(3)
    view1, view2 = (torch.rand(count, 3, 8, 8, generator=generator) for _ in range(2))
    return view1, view2, torch.arange(count) % 3, torch.randperm(64, generator=generator)[:count]


def main(method_name: str, sizes: tuple[int, ...], out: str, compiled: bool) -> None:
    dist.init_process_group("gloo")
    atexit.register(gc.collect)  # as fastlt.train.distributed.join: DDP's cycles go before the interpreter does
    rank = dist.get_rank()
    try:
        method = tiny_method(method_name)
        method.on_epoch_start(1)
        method.enable_distributed(torch.device("cpu"))
        if compiled:  # as the trainer does: the DDP module, compiled
            method.enable_compile()
        view1, view2, labels, indices = inputs(sum(sizes))
        start = sum(sizes[:rank])
        share = slice(start, start + sizes[rank])
        method.contrast.shard_sizes = sizes
        output = method.step((view1[share], view2[share]), labels[share], STEP)
        if method.boost is not None:
            method.boost.observe(gather_rows(indices[share], sizes), output.per_sample)
        torch.save({"loss": output.loss, "per_sample": output.per_sample,
                    "grads": {n: p.grad for n, p in method.named_parameters() if p.grad is not None},
                    "buffers": dict(method.named_buffers())}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], tuple(int(size) for size in sys.argv[2].split(",")), sys.argv[3], sys.argv[4:] == ["compiled"])
