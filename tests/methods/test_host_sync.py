"""The BCL step path never waits on the host: no tensor built from Python data, no scalar read,
no output whose size depends on tensor values, no copy to the host.

On CUDA each of these blocks the step until the device catches up. On a CPU they cost nothing, so
the test watches for them instead: a TorchDispatchMode names the ops that would sync on CUDA
(boolean-mask indexing is an ``aten::index`` / ``index_put_`` whose index is a bool tensor, its
``nonzero`` running inside the kernel, out of the mode's sight), and the host reads that a CPU
run never dispatches (``.cpu()``, ``.numpy()``, ``.tolist()``) are wrapped while it watches.
RandAugment runs its stages grouped on a CPU, where reading the family counts costs nothing; the
CPU test makes it run the masked stages CUDA runs. The negative tests put one such op into the
step and expect the check to name it. Where CUDA exists, torch's own sync detector checks the
same path.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from fastlt.augment import randaugment
from fastlt.data.loader import Batch
from fastlt.methods import build_method
from fastlt.methods.base import StepContext
from fastlt.methods.boost import MemorisationBoost
from fastlt.recipe import recipe_from_dict

# Ops that sync whatever their arguments: a scalar read (.item(), float(), bool(), `if tensor`), a
# tensor built from Python data (a host-to-device copy), comparisons answered on the host, and
# every op whose output size depends on the values.
SYNCING_OPS = {"aten::_local_scalar_dense", "aten::lift_fresh", "aten::lift_fresh_copy", "aten::equal",
               "aten::is_nonzero", "aten::nonzero", "aten::masked_select", "aten::_unique", "aten::_unique2",
               "aten::unique_dim", "aten::unique_consecutive", "aten::unique_dim_consecutive", "aten::bincount"}
INDEXING_OPS = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}
HOST_READS = ("cpu", "numpy", "tolist")


def _syncing(func, args: tuple, kwargs: dict) -> str | None:
    """Why this dispatched op would make a CUDA step wait, or None."""
    name = func._schema.name
    if name in SYNCING_OPS:
        return name
    if name in INDEXING_OPS and any(isinstance(index, Tensor) and index.dtype in (torch.bool, torch.uint8)
                                    for index in args[1]):
        return f"{name} with a boolean mask"
    if name == "aten::repeat_interleave" and kwargs.get("output_size") is None:
        return "aten::repeat_interleave without output_size"
    if name == "aten::_to_copy" and kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu" \
            and args[0].device.type != "cpu":
        return "aten::_to_copy to the host"
    if name == "aten::copy_" and args[0].device.type == "cpu" and args[1].device.type != "cpu":
        return "aten::copy_ to the host"
    return None


class HostSyncs(TorchDispatchMode):
    """Records, in order, every op and host read inside the context that would sync a CUDA step."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._originals = {name: getattr(Tensor, name) for name in HOST_READS}

    def __enter__(self) -> HostSyncs:
        for name, original in self._originals.items():
            setattr(Tensor, name, self._recording(name, original))
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        for name, original in self._originals.items():
            setattr(Tensor, name, original)
        return super().__exit__(*exc)

    def _recording(self, name: str, original):
        def read(tensor: Tensor, *args, **kwargs):
            self.found.append(f"Tensor.{name}()")
            return original(tensor, *args, **kwargs)
        return read

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = _syncing(func, args, kwargs)
        if reason is not None:
            self.found.append(reason)
        return func(*args, **kwargs)


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


def warmed_up_cpu_step(name: str, monkeypatch):
    """The step CUDA runs (masked RandAugment stages), after one warm-up step and one epoch end."""
    monkeypatch.setattr(randaugment, "GROUPED_DEVICES", ())
    method, step = bcl_step(name, "cpu")
    step()  # warm-up: constants are built once per device and dtype
    method.on_epoch_end(1)
    method.on_epoch_start(2)  # strengths now come from the memory, and RandAugment fires
    return step


@pytest.mark.parametrize("name", sorted(METHODS))
def test_bcl_step_has_nothing_that_waits_on_the_host(name, monkeypatch):
    step = warmed_up_cpu_step(name, monkeypatch)
    with HostSyncs() as syncs:
        for _ in range(2):
            step()
    assert syncs.found == []


# Each would make a CUDA step wait; put into the step (where BCL's memory takes the losses), the check names it.
INJECTED = {
    "boolean-mask index": (lambda losses: losses[losses > losses.mean()], "aten::index with a boolean mask"),
    "boolean-mask assignment": (lambda losses: losses.clone().index_put_((losses > losses.mean(),),
                                                                       losses.new_zeros(())),
                                "aten::index_put_ with a boolean mask"),
    ".item()": (lambda losses: losses.sum().item(), "aten::_local_scalar_dense"),
    "if tensor": (lambda losses: bool(losses.max() > 0), "aten::_local_scalar_dense"),
    ".cpu()": (lambda losses: losses.cpu(), "Tensor.cpu()"),
    ".tolist()": (lambda losses: losses.tolist(), "Tensor.tolist()"),
    "unique": (lambda losses: torch.unique(losses), "aten::_unique2"),
    "masked_select": (lambda losses: torch.masked_select(losses, losses > 0), "aten::masked_select"),
    "repeat_interleave": (lambda losses: torch.repeat_interleave(losses, torch.ones_like(losses, dtype=torch.long)),
                          "aten::repeat_interleave without output_size"),
    "nonzero": (lambda losses: (losses > 0).nonzero(), "aten::nonzero"),
}


@pytest.mark.parametrize("injected", sorted(INJECTED))
def test_the_check_names_a_syncing_op_put_into_the_step(injected, monkeypatch):
    operation, expected = INJECTED[injected]
    step = warmed_up_cpu_step("bcl-i", monkeypatch)
    observe = MemorisationBoost.observe

    def observe_with(self, indices, losses):
        operation(losses.detach())
        return observe(self, indices, losses)

    monkeypatch.setattr(MemorisationBoost, "observe", observe_with)
    host_reads = [getattr(Tensor, name) for name in HOST_READS]
    with HostSyncs() as syncs:
        step()
    assert syncs.found == [expected]
    assert [getattr(Tensor, name) for name in HOST_READS] == host_reads  # the wrappers are gone


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
        with HostSyncs() as syncs:
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert syncs.found == []
