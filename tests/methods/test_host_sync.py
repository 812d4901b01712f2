"""The BCL step path never waits on the host: no tensor built from Python data, no scalar read.

On CUDA each of these is a blocking copy or sync; on CPU the same calls show up as dispatcher
ops, so the test counts them under a TorchDispatchMode after a warm-up step (which may build
per-device constants once). RandAugment runs its stages grouped on a CPU, where reading the
family counts costs nothing; the CPU test makes it run the masked stages CUDA runs. Where CUDA
exists, torch's own sync detector checks the same path.
"""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastlt.augment import randaugment
from fastlt.data.loader import Batch
from fastlt.methods import build_method
from fastlt.methods.base import StepContext
from fastlt.recipe import recipe_from_dict

# lift_fresh: torch.tensor / new_tensor from Python data (a host-to-device copy on CUDA);
# _local_scalar_dense: .item() / int() / bool() of a tensor; nonzero: boolean-mask indexing.
SYNCING_OPS = {"aten::lift_fresh", "aten::lift_fresh_copy", "aten::_local_scalar_dense", "aten::nonzero",
               "aten::is_nonzero", "aten::equal"}


class CountSyncingOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in SYNCING_OPS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


# The BCL presets, every loss axis at once on top of BCL-D, and SelfCon's one-view path with BCL-I
# views and supervised SupCon (labels reach the loss).
METHODS = {"bcl-i": {}, "bcl-d": {},
           "bcl-d+flatnce+lotar+cosine": {"name": "bcl-d", "objective": "flatnce", "sample_weights": "lotar",
                                          "temperature_schedule": "cosine"},
           "selfcon+bcl-i+cosine": {"name": "selfcon", "view_strength": "bcl-i", "temperature_schedule": "cosine"}}


def bcl_step(name: str, device: str):
    """A BCL method and optimizer on `device`, and a function running one training step."""
    recipe = recipe_from_dict({"method": {"name": name, "pruning_ratio": 0.5, **METHODS[name]},
                               "model": {"width": 8, "projector_hidden": 16, "projector_out": 8},
                               "views": {"size": 16}}, "test")
    torch.manual_seed(0)
    method = build_method(recipe, num_samples=64).to(device)
    method.set_memory_format("contiguous")
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator(device).manual_seed(0)
    images = torch.randint(0, 256, (16, 16, 16, 3), dtype=torch.uint8, generator=generator, device=device)
    batch = Batch(images.permute(0, 3, 1, 2), torch.arange(16, device=device) % 3,
                  torch.arange(16, device=device) * 4)
    context = StepContext(autocast=lambda: torch.autocast(device, enabled=False), backward=lambda l: l.backward())
    method.train()
    method.on_epoch_start(1)

    def step():
        method.train_step(batch, generator, context)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return method, step


@pytest.mark.parametrize("name", sorted(METHODS))
def test_bcl_step_builds_no_tensor_from_python_and_reads_no_scalar(name, monkeypatch):
    monkeypatch.setattr(randaugment, "GROUPED_DEVICES", ())  # the stages CUDA runs
    method, step = bcl_step(name, "cpu")
    step()  # warm-up: constants are built once per device and dtype
    method.on_epoch_end(1)
    method.on_epoch_start(2)  # strengths now come from the memory
    with CountSyncingOps() as mode:
        for _ in range(2):
            step()
    assert mode.counts == {}, dict(mode.counts)


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(METHODS))
def test_bcl_step_has_no_cuda_sync(name):
    method, step = bcl_step(name, "cuda")
    step()
    method.on_epoch_end(1)
    method.on_epoch_start(2)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
