"""method.view_forward: "separate" forwards each view on its own (LoTaR's train.py:95-96, z1 = model(x1);
z2 = model(x2)), "joint" both as one batch of 2B (SDCLR's, BCL's and TS's code); checked against the two
forwards written out on a copy of the network (compiled: tests/train/test_compile.py)."""
import copy

import pytest
import torch

from fastlt.errors import FastltError
from fastlt.methods import StepContext, build_method, resolve_axes
from fastlt.recipe import recipe_from_dict

STEP = StepContext(autocast=lambda: torch.autocast("cpu", enabled=False), backward=lambda loss: loss.backward())


def method_with(view_forward, name="lotar", **model):
    recipe = recipe_from_dict({"model": {"width": 4, "projector_hidden": 16, "projector_out": 8, **model},
                               "method": {"name": name, "view_forward": view_forward}}, "test")
    torch.manual_seed(0)
    return build_method(recipe, num_samples=16)


def views():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 16, 16, generator=generator), torch.rand(6, 3, 16, 16, generator=generator)


def reference_step(method, view_forward):
    """The step written out on a copy: the two forwards as the reference runs them, its loss and its statistics."""
    backbone, head = copy.deepcopy(method.backbone), copy.deepcopy(method.head)
    view1, view2 = views()
    if view_forward == "separate":
        z1 = head(backbone(view1))
        z2 = head(backbone(view2))
    else:
        z1, z2 = head(backbone(torch.cat([view1, view2]))).chunk(2)
    loss, _ = method.contrast(z1, z2, torch.zeros(6, dtype=torch.long))
    loss.backward()
    return loss.detach(), {**dict(backbone.named_buffers(prefix="backbone")), **dict(head.named_buffers(prefix="head"))}


def statistics(method):
    return {name: buffer for name, buffer in method.named_buffers() if name.startswith(("backbone", "head"))}


@pytest.mark.parametrize("view_forward", ["separate", "joint", ""])
@pytest.mark.parametrize("head", ["lotar", "projector"])  # the projector's batch norms see the views as the backbone's
def test_each_view_forward_equals_its_forwards_written_out(view_forward, head):
    method = method_with(view_forward, head=head)
    method.train()
    expected_loss, expected_statistics = reference_step(method, view_forward or "joint")
    output = method.step(views(), torch.zeros(6, dtype=torch.long), STEP)
    torch.testing.assert_close(output.loss, expected_loss)
    got = statistics(method)
    assert got.keys() == expected_statistics.keys()
    for name, value in expected_statistics.items():
        torch.testing.assert_close(got[name], value, msg=name)


def test_separate_and_joint_statistics_differ():
    """So the comparisons above can fail: the running variance of the first batch norm differs between the two."""
    separate, joint = method_with("separate"), method_with("joint")
    for method in (separate, joint):
        method.step(views(), torch.zeros(6, dtype=torch.long), STEP)
    assert not torch.allclose(statistics(separate)["backbone.stem.1.running_var"],
                              statistics(joint)["backbone.stem.1.running_var"])


@pytest.mark.parametrize("name, view_forward, message", [
    ("sdclr", "joint", "method.view_forward: 'joint' does not apply to the self-damaging encoder"),
    ("selfcon", "joint", "method.view_forward: 'joint' does not apply to the multi-exit encoder"),
    ("selfcon", "separate", "method.view_forward: 'separate' does not apply to the multi-exit encoder"),
])
def test_combinations_that_mean_nothing_are_one_line_errors(name, view_forward, message):
    recipe = recipe_from_dict({"method": {"name": name, "view_forward": view_forward}}, "test")
    with pytest.raises(FastltError, match=message):
        resolve_axes(recipe)


@pytest.mark.parametrize("name", ["sdclr", "selfcon"])
def test_the_encoders_own_forward_is_the_default(name):
    resolve_axes(recipe_from_dict({"method": {"name": name}}, "test"))
    if name == "sdclr":  # its views already take separate branches
        resolve_axes(recipe_from_dict({"method": {"name": name, "view_forward": "separate"}}, "test"))
