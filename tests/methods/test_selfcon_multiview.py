"""SelfCon-M / SelfCon-MU (two views through both exits) and the sub-network-anchored contrast mode one, against a
loop over anchors written from SelfCon's ConLoss (losses/losses.py) as main_represent.py:293-303 calls it."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from fastlt.data.loader import Batch
from fastlt.errors import FastltError
from fastlt.methods import build_method, resolve_axes
from fastlt.methods.base import StepContext
from fastlt.recipe import recipe_from_dict

LABELS = torch.tensor([0, 1, 0, 2, 1])
TAU = 0.1


def method_of(name: str, **changes):
    recipe = recipe_from_dict({"method": {"name": name, "temperature": TAU, **changes}, "views": {"size": 16},
                               "model": {"width": 8, "head": "mlp", "projector_hidden": 16, "projector_out": 8}},
                              "test")
    torch.manual_seed(0)
    return build_method(recipe, num_samples=len(LABELS)).double()


def reference_loss(features: torch.Tensor, labels: torch.Tensor | None, anchors: str = "all") -> torch.Tensor:
    """SelfCon's ConLoss, one anchor at a time: features [N, n_views, D] (here the exits), labels [N] or None
    (then a row's only positive is itself at the other exit). Anchors are every (exit, row), or with
    ``anchors="one"`` only exit 0's; each is contrasted with every other (exit, row); loss = the mean over
    anchors of -(tau / 0.07) times the mean log-probability of its positives."""
    rows, exits = features.shape[:2]
    z = F.normalize(features, dim=2)
    keys = [(e, r) for e in range(exits) for r in range(rows)]
    same = (lambda a, b: bool(labels[a] == labels[b])) if labels is not None else (lambda a, b: a == b)
    losses = []
    for anchor in (keys if anchors == "all" else keys[:rows]):
        others = [k for k in keys if k != anchor]
        log_denominator = torch.logsumexp(torch.stack([z[anchor[1], anchor[0]] @ z[k[1], k[0]] / TAU
                                                       for k in others]), 0)
        positives = [k for k in others if same(anchor[1], k[1])]
        terms = [z[anchor[1], anchor[0]] @ z[p[1], p[0]] / TAU - log_denominator for p in positives]
        losses.append(-(TAU / 0.07) * torch.stack(terms).mean())
    return torch.stack(losses).mean()


def exits_of(method, views):
    """main_represent.py:344 and :293-297: both views as one batch, then features[sample] = (sub, backbone) with
    the samples ordered view 1's images then view 2's."""
    sub, main = method.encoder(torch.cat(views))
    return torch.stack([method.subnetwork_head(sub), method.head(main)], dim=1)


@pytest.mark.parametrize("name, supervised", [("selfcon-m", True), ("selfcon-mu", False)])
def test_two_views_through_both_exits_equal_the_reference_loss(name, supervised):
    method = method_of(name)
    assert method.num_views == 2
    generator = torch.Generator().manual_seed(1)
    views = [torch.rand(len(LABELS), 3, 16, 16, dtype=torch.float64, generator=generator) for _ in range(2)]
    loss, per_sample = method(*views, LABELS)
    features = exits_of(method, views)
    labels = LABELS.repeat(2) if supervised else None
    torch.testing.assert_close(loss.double(), reference_loss(features, labels), rtol=1e-5, atol=1e-6)
    for image in range(len(LABELS)):  # an image's loss: the mean over its two views' rows at both exits
        anchors = [reference_anchor(features.detach(), labels, exit, view * len(LABELS) + image)
                   for view in range(2) for exit in range(2)]
        torch.testing.assert_close(per_sample[image].double(), torch.stack(anchors).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective, supervised", [("supcon", True), ("supcon-unsupervised", False)])
@pytest.mark.parametrize("anchors", ["all", "one"])
def test_stacked_views_values_gradients_and_per_sample_losses(objective, supervised, anchors):
    """The loss module on [B, V, D] embeddings of both exits, against the loop: the value, the gradient of every
    embedding, and each image's loss = the mean of its anchors' (over its views and, in mode all, its exits)."""
    method = method_of("selfcon-m", objective=objective, contrast_mode=anchors)
    generator = torch.Generator().manual_seed(2)
    sub = torch.randn(len(LABELS), 2, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    main = torch.randn(len(LABELS), 2, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    loss, per_sample = method.contrast(sub, main, LABELS)
    # the reference's rows: view 1's images, then view 2's
    rows = lambda z: z.detach().transpose(0, 1).flatten(0, 1).requires_grad_(True)  # noqa: E731
    ref_sub, ref_main = rows(sub), rows(main)
    expected = reference_loss(torch.stack([ref_sub, ref_main], 1), LABELS.repeat(2) if supervised else None, anchors)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    got = torch.autograd.grad(loss, (sub, main))
    want = [g.unflatten(0, (2, -1)).transpose(0, 1) for g in torch.autograd.grad(expected, (ref_sub, ref_main))]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-7)
    for image in range(len(LABELS)):  # the image's rows are (view 1, image) and (view 2, image)
        features = torch.stack([ref_sub, ref_main], 1).detach()
        one = [reference_anchor(features, LABELS.repeat(2) if supervised else None, exit, view * len(LABELS) + image)
               for view in range(2) for exit in ((0, 1) if anchors == "all" else (0,))]
        torch.testing.assert_close(per_sample[image].double(), torch.stack(one).mean(), rtol=1e-5, atol=1e-6)


def reference_anchor(features, labels, exit: int, row: int) -> torch.Tensor:
    """One anchor's loss in the reference: its row of the [exits x rows] logits."""
    z = F.normalize(features, dim=2)
    rows, exits = features.shape[:2]
    keys = [(e, r) for e in range(exits) for r in range(rows) if (e, r) != (exit, row)]
    logits = torch.stack([z[row, exit] @ z[r, e] / TAU for e, r in keys])
    same = [(labels[row] == labels[r]) if labels is not None else r == row for _, r in keys]
    positive = torch.tensor([bool(s) for s in same])
    return -(TAU / 0.07) * (logits - torch.logsumexp(logits, 0))[positive].mean()


def test_one_view_mode_one_anchors_only_the_sub_network_exit():
    method = method_of("selfcon", contrast_mode="one")
    view = torch.rand(len(LABELS), 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    loss, per_sample = method(view, LABELS)
    sub, main = method.encoder(view)
    features = torch.stack([method.subnetwork_head(sub), method.head(main)], dim=1)
    torch.testing.assert_close(loss.double(), reference_loss(features, LABELS, "one"), rtol=1e-5, atol=1e-6)
    for image in range(len(LABELS)):
        torch.testing.assert_close(per_sample[image].double(), reference_anchor(features.detach(), LABELS, 0, image),
                                   rtol=1e-5, atol=1e-6)


def test_two_views_are_drawn_and_every_part_learns():
    method = method_of("selfcon-mu").float()
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    batch = Batch(images, LABELS, torch.arange(5))
    views = method.make_views(batch, torch.Generator().manual_seed(0))
    assert len(views) == 2 and not torch.equal(views[0], views[1])
    method.on_epoch_start(1)
    output = method.train_step(batch, torch.Generator().manual_seed(0),
                               StepContext(autocast=contextlib.nullcontext, backward=lambda loss: loss.backward()))
    assert output.per_sample.shape == (5,)
    for part in (method.encoder.subnetwork, method.subnetwork_head, method.head, method.encoder.backbone):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_two_view_multi_exit_takes_bcl_d_but_not_lotar_or_separate_forwards():
    assert resolve_axes(recipe_from_dict({"method": {"name": "selfcon-m", "view_strength": "bcl-d"}}, "t")).encoder \
        == "multi-exit-multiview"
    with pytest.raises(FastltError, match="encoder 'multi-exit-multiview' cannot be combined with sample_weights"):
        resolve_axes(recipe_from_dict({"method": {"name": "selfcon-m", "sample_weights": "lotar"}}, "t"))
    with pytest.raises(FastltError, match="method.view_forward: 'separate' does not apply"):
        resolve_axes(recipe_from_dict({"method": {"name": "selfcon-mu", "view_forward": "separate"}}, "t"))
    with pytest.raises(FastltError, match="method.contrast_mode: must be one of all, one"):
        recipe_from_dict({"method": {"contrast_mode": "two"}}, "t")
