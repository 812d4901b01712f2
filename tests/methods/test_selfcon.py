"""SelfCon: one view, two exits; positives are the class at both exits (supervised) or the image's other exit."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from fastlt.data.loader import Batch
from fastlt.errors import FastltError
from fastlt.methods import build_method, resolve_axes
from fastlt.methods.base import StepContext
from fastlt.recipe import recipe_from_dict

LABELS = torch.tensor([0, 1, 0, 2, 1, 0])
TAU = 0.1


def selfcon(name="selfcon", **model):
    recipe = recipe_from_dict({"method": {"name": name, "temperature": TAU}, "views": {"size": 16},
                               "model": {"width": 8, "head": "mlp", "projector_hidden": 16, "projector_out": 8,
                                         **model}}, "test")
    torch.manual_seed(0)
    return build_method(recipe, num_samples=len(LABELS)).double()


def loop_loss(embeddings: dict, positive) -> torch.Tensor:
    """Mean over anchors (exit, image) of -(tau/0.07) mean_{p in P} log softmax over all other (exit', image')."""
    keys = list(embeddings)
    z = {k: F.normalize(v, dim=0) for k, v in embeddings.items()}
    total = 0.0
    for anchor in keys:
        others = [k for k in keys if k != anchor]
        log_denominator = torch.logsumexp(torch.stack([z[anchor] @ z[k] / TAU for k in others]), 0)
        positives = [k for k in others if positive(anchor, k)]
        total = total - (TAU / 0.07) * sum(z[anchor] @ z[p] / TAU - log_denominator for p in positives) / len(positives)
    return total / len(keys)


def exit_embeddings(method, view):
    sub, main = method.encoder(view)
    sub, main = method.subnetwork_head(sub), method.head(main)
    return {**{("sub", i): sub[i] for i in range(len(view))}, **{("backbone", i): main[i] for i in range(len(view))}}


@pytest.mark.parametrize("name, positive", [
    ("selfcon", lambda a, k: bool(LABELS[a[1]] == LABELS[k[1]])),  # the class, at either exit
    ("selfcon-su", lambda a, k: a[1] == k[1]),  # the same image: only at the other exit
], ids=["supervised", "unsupervised"])
def test_loss_takes_the_exits_as_views_with_the_right_positives(name, positive):
    method = selfcon(name)
    view = torch.rand(len(LABELS), 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss, per_sample = method(view, LABELS)
    expected = loop_loss(exit_embeddings(method, view), positive)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    assert per_sample.shape == (len(LABELS),)


def test_one_view_per_image_and_every_part_learns():
    method = selfcon(subnetwork="small").float()
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    batch = Batch(images, LABELS, torch.arange(6))
    views = method.make_views(batch, torch.Generator().manual_seed(0))
    assert len(views) == 1 and views[0].shape == (6, 3, 16, 16)
    method.on_epoch_start(1)
    method.train_step(batch, torch.Generator().manual_seed(0),
                      StepContext(autocast=contextlib.nullcontext, backward=lambda loss: loss.backward()))
    for part in (method.encoder.subnetwork, method.subnetwork_head, method.head, method.encoder.backbone):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


@pytest.mark.parametrize("axes, message", [
    ({"sample_weights": "lotar"}, "encoder 'multi-exit' cannot be combined with sample_weights 'lotar'"),
    ({"view_strength": "bcl-d"}, "encoder 'multi-exit' cannot be combined with view_strength 'bcl-d'"),
])
def test_axes_that_need_two_views_are_refused(axes, message):
    with pytest.raises(FastltError, match=message):
        resolve_axes(recipe_from_dict({"method": {"name": "selfcon", **axes}}, "test"))


def test_only_a_multi_exit_encoder_has_other_exits():
    with pytest.raises(FastltError, match="eval.exit: 'sub-network' needs a multi-exit encoder"):
        build_method(recipe_from_dict({"model": {"width": 4}}, "test"), num_samples=4).feature_extractor("sub-network")
    with pytest.raises(FastltError, match="model.head: the self-damaging encoder needs 'projector'"):
        build_method(recipe_from_dict({"method": {"name": "sdclr"}, "model": {"width": 4, "head": "mlp"}}, "test"), 4)
