"""torch.compile of a method's step forward: same losses and gradients as eager (CPU inductor).

This is the only test that compiles (a cold compile costs tens of seconds here). It uses
SDCLR because its branch switch is the part most likely to confuse tracing: the compiled
forward must keep one graph per branch and per grad mode. Width 8, because at width 4 the
strided 1x1 shortcuts are the convolutions oneDNN's AVX2 channels_last kernel mis-trains
(fastlt.train.device.memory_format_hazard).
"""
import contextlib
import copy

import torch

from fastlt.methods import build_method
from fastlt.methods.base import StepContext
from fastlt.recipe import recipe_from_dict


def test_compiled_sdclr_step_equals_eager():
    recipe = recipe_from_dict({"method": {"name": "sdclr", "pruning_ratio": 0.5},
                               "model": {"width": 8, "projector_hidden": 16, "projector_out": 8}}, "test")
    torch.manual_seed(0)
    eager = build_method(recipe, num_samples=8).to(memory_format=torch.channels_last)
    compiled = copy.deepcopy(eager)
    compiled.enable_compile()
    generator = torch.Generator().manual_seed(0)
    views = [torch.rand(8, 3, 16, 16, generator=generator).contiguous(memory_format=torch.channels_last)
             for _ in range(2)]
    context = StepContext(autocast=contextlib.nullcontext, backward=lambda loss: loss.backward())
    for method in (eager, compiled):
        method.on_epoch_start(1)
    for _ in range(2):  # the second step reuses the cached graphs
        expected = eager.step(*views, context)
        result = compiled.step(*views, context)
        assert torch.allclose(result.loss, expected.loss, atol=1e-5)
        assert torch.allclose(result.per_sample, expected.per_sample, atol=1e-5)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        # Fused kernels sum in another order: agree to 1e-4 of the gradient's own scale (plus 1e-5 for
        # gradients that are zero in exact arithmetic, such as a bias followed by batch norm).
        scale = float(a.grad.abs().max())
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4 * scale + 1e-5, msg=name)
