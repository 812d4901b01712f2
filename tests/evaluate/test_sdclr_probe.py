"""The SDCLR protocol's fc: an independent SGD loop, the milestones, best-epoch choice and a frozen backbone."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastlt.errors import FastltError
from fastlt.evaluate.linear import seeded_linear
from fastlt.evaluate.sdclr_probe import SDCLRProbeConfig, train_fc_through_backbone


class PooledColour(nn.Module):
    """Mean colour of the image through a batch norm: crop-with-zero-padding-0 and flip invariant."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(3)
        self.norm.running_mean.fill_(0.5)
        self.norm.running_var.fill_(0.01)

    def forward(self, x):
        return self.norm(x.mean(dim=(2, 3)))


def colour_data(count: int, seed: int, boost: int = 120):
    """uint8 NHWC images whose class (0, 1, 2) raises one channel by ``boost``, plus labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (count,), generator=generator)
    images = torch.randint(0, 120, (count, 6, 6, 3), generator=generator)
    images[torch.arange(count), :, :, labels] += boost
    return images.to(torch.uint8), labels


def test_milestones_are_the_papers_epochs():
    assert SDCLRProbeConfig().milestones == [10, 20]
    assert SDCLRProbeConfig(epochs=100, decay_at=(0.4, 0.6)).milestones == [40, 60]
    with pytest.raises(FastltError, match="epochs and batch size"):
        SDCLRProbeConfig(epochs=0)


def test_fc_equals_plain_sgd_on_invariant_features_and_keeps_the_best_held_out_epoch():
    images, labels = colour_data(40, 0, boost=30)  # hard enough that the epochs differ
    held_images, held_labels = colour_data(30, 1, boost=30)
    backbone = PooledColour().train()  # training mode on purpose: the probe must freeze batch norm
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    config = SDCLRProbeConfig(epochs=6, lr=0.2, batch_size=64, padding=0, seed=5)  # one batch per epoch
    with torch.no_grad():
        held_features = backbone.eval()(held_images.permute(0, 3, 1, 2).float() / 255)
    backbone.train()
    probe = train_fc_through_backbone(backbone, images, labels, held_features, held_labels, 3, config)
    assert backbone.training  # its mode is restored
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key  # batch norm statistics frozen, weights untouched

    # Independent: the same initialisation, SGD with momentum on the (augmentation-invariant) features,
    # x0.1 after epochs 2 and 4, held-out accuracy after every epoch, the first best epoch kept.
    features = backbone.eval()(images.permute(0, 3, 1, 2).float() / 255).detach()
    fc = seeded_linear(3, 3, torch.Generator().manual_seed(5))
    optimizer = torch.optim.SGD(fc.parameters(), lr=0.2, momentum=0.9)
    history, snapshots = [], []
    for epoch in range(6):
        for group in optimizer.param_groups:
            group["lr"] = 0.2 * 0.1 ** sum(epoch >= m for m in (2, 4))
        loss = F.cross_entropy(fc(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            history.append(100.0 * (fc(held_features).argmax(1) == held_labels).float().mean().item())
        snapshots.append(fc.weight.detach().clone())
    best = max(range(6), key=lambda e: (history[e], -e))
    assert probe.held_out_accuracy == pytest.approx(history)
    assert probe.best_epoch == best + 1
    torch.testing.assert_close(probe.fc.weight, snapshots[best])
    assert len(set(history)) > 1  # the epochs differ, so the choice of the best one is tested


def test_augmented_training_learns_and_is_seeded():
    images, labels = colour_data(120, 2)
    held_images, held_labels = colour_data(60, 3)
    backbone = PooledColour().eval()
    held_features = backbone(held_images.permute(0, 3, 1, 2).float() / 255).detach()
    config = SDCLRProbeConfig(epochs=6, lr=1.0, batch_size=32, seed=1)  # padding 4: the crops differ
    first = train_fc_through_backbone(backbone, images, labels, held_features, held_labels, 3, config)
    again = train_fc_through_backbone(backbone, images, labels, held_features, held_labels, 3, config)
    assert max(first.held_out_accuracy) > 80.0
    assert first.held_out_accuracy == again.held_out_accuracy and torch.equal(first.fc.weight, again.fc.weight)
    with pytest.raises(FastltError, match="uint8"):
        train_fc_through_backbone(backbone, images.float(), labels, held_features, held_labels, 3, config)


def test_resized_training_views_are_torchvisions_random_resized_crop_and_flip():
    """ImageNet-100's probe views: the boxes drawn as RandomResizedCrop(scale 0.08..1) draws them, then
    torchvision's bilinear resized crop and a flip, per image."""
    import torchvision.transforms.v2.functional as TF

    from fastlt.augment.views import sample_resized_crop_boxes
    from fastlt.evaluate.sdclr_probe import RESIZED_RATIO, RESIZED_SCALE, augment_batch

    images = torch.randint(0, 256, (6, 3, 40, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    config = SDCLRProbeConfig(crop="resized", crop_size=24)
    views = augment_batch(images, torch.Generator().manual_seed(3), config)
    assert views.shape == (6, 3, 24, 24) and views.is_contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(3)  # the same draws, in the same order
    boxes = sample_resized_crop_boxes(6, 40, 36, RESIZED_SCALE, RESIZED_RATIO, generator)
    flips = torch.rand(6, generator=generator) < 0.5
    for b, (top, left, height, width) in enumerate(boxes.tolist()):
        expected = TF.resized_crop(images[b].float() / 255, top, left, height, width, [24, 24],
                                   TF.InterpolationMode.BILINEAR, antialias=True).clamp(0, 1)
        expected = TF.horizontal_flip(expected) if flips[b] else expected
        torch.testing.assert_close(views[b], expected, atol=1e-5, rtol=0)
    with pytest.raises(FastltError, match="crop must be one of"):
        SDCLRProbeConfig(crop="resized")


def test_resized_probe_crop_needs_the_center_crop_side():
    from fastlt.recipe import recipe_from_dict

    with pytest.raises(FastltError, match="eval.sdclr_crop: resized needs eval.center_crop"):
        recipe_from_dict({"eval": {"sdclr_crop": "resized"}}, "test")
    assert recipe_from_dict({"eval": {"sdclr_crop": "resized", "center_crop": 224}}, "test").eval.center_crop == 224
