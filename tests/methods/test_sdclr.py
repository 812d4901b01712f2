"""One SDCLR iteration, both of its forms, against an independent transcription of the reference's
three-forward, two-backward iteration with plain layers.

The reference is built without MaskedConv2d, DualBatchNorm or the branch switch: a plain
ResNet is called with torch.func.functional_call, once with the dense weights and BN copy 0,
twice with weight * mask and BN copy 1, following docs/sdclr.md, on copies of the batch-norm
statistics, which it updates as the reference does.
"""
import contextlib
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fastlt.methods import build_method
from fastlt.methods.base import StepContext
from fastlt.models.heads import projector
from fastlt.models.resnet import build_resnet
from fastlt.objectives.infonce import info_nce
from fastlt.recipe import recipe_from_dict

TAU = 0.2


def sdclr_method(forwards: int = 2):
    recipe = recipe_from_dict(
        {"method": {"name": "sdclr", "pruning_ratio": 0.5, "temperature": TAU, "sdclr_forwards": forwards},
         "model": {"width": 4, "projector_hidden": 16, "projector_out": 8}},
        "test",
    )
    torch.manual_seed(0)
    return build_method(recipe, num_samples=8)


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = build_resnet("resnet18", width=4)
        self.head = projector(32, 16, 8)

    def forward(self, x):
        return self.head(self.backbone(x))


def branch_tensors(method, branch: int, params: dict, buffers: dict) -> dict:
    """Plain-model names -> tensors of one branch: BN copy `branch`, conv weights masked on branch 1."""
    masks = {name[: -len(".mask")]: buf for name, buf in buffers.items() if name.endswith(".mask")}
    out = {}
    for name, tensor in list(params.items()) + list(buffers.items()):
        if ".copies." in name:
            if f".copies.{branch}." not in name:
                continue
            name = name.replace(f".copies.{branch}.", ".")
        elif name.endswith(".mask") or name.startswith("contrast."):  # the loss's temperature is no weight
            continue
        elif branch == 1 and name.endswith(".weight") and name[: -len(".weight")] in masks:
            tensor = tensor * masks[name[: -len(".weight")]]
        out[name] = tensor
    return out


@dataclass
class Reference:
    gradients: dict  # parameter name -> gradient
    dense_loss: float  # L1, the logged loss
    per_sample: torch.Tensor
    statistics: dict  # buffer name -> value after the iteration: the pruned BN copies updated twice
    pruned_once: dict  # the pruned BN copies' statistics after the first pruned forward only


def reference_iteration(method, view1, view2, summed_shortcut=False) -> Reference:
    """VITA-Group/SDCLR prune/prune_simCLR.py:50-79: pruned on view 2 without grad, dense on view 1, backward of
    L1; pruned on view 2 again, backward of L2 against the detached dense embeddings (or, ``summed_shortcut``,
    the wrong shortcut: both branches live and the sum L1 + L2 = 2 L backpropagated)."""
    params = {name: p.detach().clone().requires_grad_(True) for name, p in method.named_parameters()}
    buffers = {name: buf.clone() for name, buf in method.named_buffers()}  # leave the method's stats alone
    plain = Plain()
    dense = lambda x: functional_call(plain, branch_tensors(method, 0, params, buffers), (x,))
    pruned = lambda x: functional_call(plain, branch_tensors(method, 1, params, buffers), (x,))
    if summed_shortcut:
        z1, z2 = dense(view1), pruned(view2)
        dense_loss, per_sample = info_nce(z1, z2, TAU)
        (2 * dense_loss).backward()
        pruned_once = {}
    else:
        with torch.no_grad():
            z2 = pruned(view2)
        pruned_once = {name: buf.clone() for name, buf in buffers.items() if ".copies.1." in name}
        z1 = dense(view1)
        dense_loss, per_sample = info_nce(z1, z2, TAU)
        dense_loss.backward()
        info_nce(z1.detach(), pruned(view2), TAU)[0].backward()
    return Reference({name: p.grad for name, p in params.items()}, float(dense_loss.detach()), per_sample.detach(),
                     buffers, pruned_once)


@pytest.mark.parametrize("forwards", [2, 3])
def test_iteration_gradients_and_statistics_equal_the_reference_iteration(forwards):
    """Both forms give the reference's gradients, logged loss and dense statistics; the pruned batch norms'
    running statistics are the reference's with 3 forwards and updated once, not twice, with 2."""
    method = sdclr_method(forwards)
    method.on_epoch_start(1)
    generator = torch.Generator().manual_seed(1)
    view1 = torch.rand(8, 3, 8, 8, generator=generator)
    view2 = torch.rand(8, 3, 8, 8, generator=generator)
    expected = reference_iteration(method, view1, view2)
    shortcut = reference_iteration(method, view1, view2, summed_shortcut=True).gradients

    context = StepContext(autocast=contextlib.nullcontext, backward=lambda loss: loss.backward())
    output = method.step((view1, view2), torch.zeros(8, dtype=torch.long), context)
    assert abs(float(output.loss) - expected.dense_loss) < 1e-5  # the logged loss is L1
    torch.testing.assert_close(output.per_sample, expected.per_sample)
    differs_from_shortcut = False
    for name, parameter in method.named_parameters():
        reference = expected.gradients[name] if expected.gradients[name] is not None else torch.zeros_like(parameter)
        assert torch.allclose(parameter.grad, reference, atol=1e-5, rtol=1e-4), name
        if shortcut[name] is not None and not torch.allclose(parameter.grad, shortcut[name], atol=1e-4):
            differs_from_shortcut = True
    assert differs_from_shortcut
    pruned_statistics_differ = False
    for name, buffer in method.named_buffers():
        once = forwards == 2 and name in expected.pruned_once
        want = expected.pruned_once[name] if once else expected.statistics[name]
        torch.testing.assert_close(buffer, want, msg=name)
        pruned_statistics_differ |= not torch.allclose(buffer.float(), expected.statistics[name].float())
    assert pruned_statistics_differ == (forwards == 2)
    assert method.has_unused_parameters == (forwards == 3)  # DDP: find_unused_parameters for two backwards only


def test_feature_extractor_is_the_dense_branch_with_bn_copy_zero():
    from fastlt.models.self_damaging import DENSE, PRUNED, DualBatchNorm

    method = sdclr_method()
    method.on_epoch_start(1)
    x = torch.rand(4, 3, 8, 8)
    method.switch.active = PRUNED
    with torch.no_grad():
        method.backbone(x * 2)  # give the pruned copies different running statistics
    extractor = method.feature_extractor().eval()
    method.switch.active = PRUNED  # whatever state training left behind
    features = extractor(x)
    assert method.switch.active == DENSE
    plain = Plain().eval()
    tensors = branch_tensors(method, 0, dict(method.named_parameters()), dict(method.named_buffers()))
    expected = functional_call(plain.backbone, {k[len("backbone."):]: v for k, v in tensors.items()
                                                if k.startswith("backbone.")}, (x,))
    assert torch.allclose(features, expected, atol=1e-6)
    assert any(isinstance(m, DualBatchNorm) for m in extractor.modules())
