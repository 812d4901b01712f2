"""torch.compile of a method's step forward: same losses and gradients as eager (CPU inductor),
for a full batch and a partial last one, with one extra graph per shape and none after.

This is the only file that compiles (a cold compile costs tens of seconds here). The first
test uses SDCLR because its branch switch is the part most likely to confuse tracing: the compiled
forward must keep one graph per branch and per grad mode. Width 16 in channels_last: narrower
strided 1x1 shortcuts are what oneDNN's channels_last kernels cannot train
(fastlt.hardware.memory_format_hazard). The second checks, in one compile, that a temperature
schedule reaches a compiled SimCLR loss without recompiling it and that LoTaR's separate view forwards
compile. The last compiles BCL-D's view pipeline as `train.compile_views` does, in the CPU's form and
in CUDA's.
"""
import contextlib
import copy

import pytest
import torch
from torch._dynamo.utils import counters

from fastlt.augment import randaugment
from fastlt.augment.views import SimCLRViews, ViewConfig
from fastlt.methods import build_method
from fastlt.methods.boost import MemorisationBoost
from fastlt.methods.base import StepContext
from fastlt.recipe import recipe_from_dict

CONTEXT = StepContext(autocast=contextlib.nullcontext, backward=lambda loss: loss.backward())
ZERO_GRADIENT_NOISE = 5e-5  # the floor of a gradient comparison: fp32 noise of gradients zero in exact arithmetic


def eager_and_compiled(method: dict, tmp_path, monkeypatch):
    """Two copies of one freshly seeded method (width 16, channels_last), the second compiled."""
    # A cold cache of its own: inductor's on-disk cache is keyed without the oneDNN/ATen ISA limits
    # (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY), and reusing kernels built under other limits crashed here.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    recipe = recipe_from_dict({"method": method,
                               "model": {"width": 16, "projector_hidden": 16, "projector_out": 8}}, "test")
    torch.manual_seed(0)
    eager = build_method(recipe, num_samples=8).to(memory_format=torch.channels_last)
    compiled = copy.deepcopy(eager)
    compiled.enable_compile()
    return eager, compiled


def view_pair(size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    return tuple(torch.rand(size, 3, 16, 16, generator=generator).contiguous(memory_format=torch.channels_last)
                 for _ in range(2))


def test_compiled_sdclr_step_equals_eager_for_full_and_last_batch(tmp_path, monkeypatch):
    eager, compiled = eager_and_compiled({"name": "sdclr", "pruning_ratio": 0.5}, tmp_path, monkeypatch)
    generator = torch.Generator().manual_seed(0)
    batches = {size: view_pair(size, generator) for size in (8, 5)}  # a full batch and a partial last one
    labels = {size: torch.zeros(size, dtype=torch.long) for size in (8, 5)}

    for method in (eager, compiled):
        method.on_epoch_start(1)
    graphs, graphs_before = [], counters["stats"]["unique_graphs"]
    for size in (8, 5, 8, 5):  # the second epoch reuses the cached graphs
        expected = eager.step(batches[size], labels[size], CONTEXT)
        result = compiled.step(batches[size], labels[size], CONTEXT)
        # Inductor's fused kernels sum in another order (which also depends on the thread count): fp32 agreement
        # to a few parts in 1e5 of each sample's loss.
        torch.testing.assert_close(result.loss, expected.loss, rtol=2e-5, atol=1e-5)
        torch.testing.assert_close(result.per_sample, expected.per_sample, rtol=2e-5, atol=1e-5)
        graphs.append(counters["stats"]["unique_graphs"])
    one_shape = graphs[0] - graphs_before
    assert one_shape >= 1 and graphs[1] - graphs[0] == one_shape  # the last batch: one more graph each
    assert graphs[3] == graphs[1]  # no recompilation in the next epoch
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        # Fused kernels sum in another order: agree to 1e-4 of the gradient's own scale, plus a floor for
        # gradients that are zero in exact arithmetic (a bias followed by batch norm), which are fp32 noise:
        # head.0.bias differed by 1.05e-5 under oneDNN's AVX2 kernels.
        scale = float(a.grad.abs().max())
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4 * scale + ZERO_GRADIENT_NOISE, msg=name)


def test_a_scheduled_temperature_and_separate_view_forwards_compile_once(tmp_path, monkeypatch):
    """A SimCLR-TS step with LoTaR's method.view_forward = "separate": the temperature schedule reaches the
    compiled loss as a tensor, without recompiling, and the two forwards in the one graph give eager's loss,
    gradients and batch-norm statistics (tests/methods/test_view_forward.py checks eager against the
    forwards written out). One compile serves both checks: each cold compile costs tens of seconds."""
    eager, compiled = eager_and_compiled({"name": "simclr-ts", "temperature_period": 2, "view_forward": "separate"},
                                         tmp_path, monkeypatch)
    views = view_pair(8, torch.Generator().manual_seed(0))

    graphs, losses = [], []
    for epoch in (1, 2, 3):  # tau 0.55, 0.1, 0.55
        for method in (eager, compiled):
            method.on_epoch_start(epoch)
        expected = eager.step(views, torch.zeros(8, dtype=torch.long), CONTEXT)
        result = compiled.step(views, torch.zeros(8, dtype=torch.long), CONTEXT)
        assert torch.allclose(result.loss, expected.loss, atol=1e-5)
        graphs.append(counters["stats"]["unique_graphs"])
        losses.append(float(result.loss))
        if epoch == 1:
            for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
                scale = float(a.grad.abs().max())  # fused sums in another order, as above
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4 * scale + ZERO_GRADIENT_NOISE,
                                           msg=name)
            for (name, a), (_, b) in zip(eager.named_buffers(), compiled.named_buffers()):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert graphs[0] == graphs[1] == graphs[2]
    assert losses[1] != losses[0]  # the new temperature did reach the compiled graph


@pytest.mark.parametrize("stage_in_graph", [False, True], ids=["cpu-form", "cuda-form"])
def test_compiled_bcl_d_views_equal_eager_with_static_graphs(stage_in_graph, tmp_path, monkeypatch):
    """On a CPU the RandAugment stage runs eagerly (grouped) between two compiled graphs; on CUDA its
    masked form is traced into the one graph of the pipeline, shown here by treating the CPU as CUDA
    is treated. Either way: eager's views, a fixed set of graphs per batch shape, no graph break."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    if stage_in_graph:
        monkeypatch.setattr(randaugment, "GROUPED_DEVICES", ())
    boost = MemorisationBoost(24, "bcl-d")
    boost.weights.copy_(torch.rand(24, generator=torch.Generator().manual_seed(1)))  # most samples fire
    images = torch.randint(0, 256, (24, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    config = ViewConfig(size=16, blur_p=0.5)
    eager, compiled = SimCLRViews(config, boost.stage), SimCLRViews(config, boost.stage)
    compiled.enable_compile()

    def two_views(views: SimCLRViews, rows: slice) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(3)
        indices = torch.arange(24)[rows]
        return views.many(images[rows], generator, 2, boost.strengths(indices, generator))

    graphs_before, breaks_before = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    for rows in (slice(0, 24), slice(0, 7), slice(0, 24)):  # a full batch, the last one, the next epoch
        for expected, result in zip(two_views(eager, rows), two_views(compiled, rows)):
            torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)
            assert result.is_contiguous(memory_format=torch.channels_last)
    graphs_per_shape = 1 if stage_in_graph else 2
    assert counters["stats"]["unique_graphs"] - graphs_before == 2 * graphs_per_shape  # none recompiled
    assert sum(counters["graph_break"].values()) == breaks_before
