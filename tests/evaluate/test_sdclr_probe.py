"""The SDCLR protocol's fc against transcriptions of SDCLR's train_cifar.py / train_imagenet.py loops: the lr of
each epoch, the checked epochs and the best one, the N(0, 0.01) fc, and a frozen backbone."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import lrs_as_driven
from torch import nn

from fastlt.errors import FastltError
from fastlt.evaluate.sdclr_probe import SDCLRProbeConfig, held_out_accuracy, sdclr_fc, train_fc_through_backbone

# The reference's train_cifar.py steps its scheduler before the optimiser, which torch warns about: that is the
# behaviour transcribed here.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")


class PooledColour(nn.Module):
    """Mean colour of the image through a batch norm (and, with ``width``, a fixed random map to more
    features): crop-with-zero-padding-0 and flip invariant."""

    def __init__(self, width: int = 0):
        super().__init__()
        self.norm = nn.BatchNorm1d(3)
        self.norm.running_mean.fill_(0.5)
        self.norm.running_var.fill_(0.01)
        self.spread = nn.Linear(3, width) if width else nn.Identity()
        if width:
            with torch.no_grad():
                self.spread.weight.copy_(torch.randn(width, 3, generator=torch.Generator().manual_seed(9)))
                self.spread.bias.zero_()

    def forward(self, x):
        return self.spread(self.norm(x.mean(dim=(2, 3))))


def colour_data(count: int, seed: int, boost: int = 120, classes: int = 3):
    """uint8 NHWC images whose class raises channel ``class % 3`` by ``boost * (1 + class // 3)``, plus labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (count,), generator=generator)
    images = torch.randint(0, 100, (count, 6, 6, 3), generator=generator)
    images[torch.arange(count), :, :, labels % 3] += (boost * (1 + labels // 3))[:, None, None]
    return images.clamp(0, 255).to(torch.uint8), labels


def reference_lrs(epochs: int, milestones: list[int], step_before: bool, lr: float = 30.0) -> list[float]:
    """The lr each epoch trains at, from a real SGD + MultiStepLR(milestones, 0.1) driven as SDCLR drives it:
    train_cifar.py calls scheduler.step() before each epoch's training, train_imagenet.py after it."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return lrs_as_driven(optimizer, scheduler, epochs, scheduler_first=step_before)


@pytest.mark.parametrize("epochs, decay_at, milestones", [(30, (1 / 3, 2 / 3), [10, 20]), (100, (0.4, 0.6), [40, 60])])
@pytest.mark.parametrize("lr_step", ["before-epoch", "after-epoch"])
def test_lr_of_each_epoch_is_sdclrs_scheduler_order(epochs, decay_at, milestones, lr_step):
    config = SDCLRProbeConfig(epochs=epochs, decay_at=decay_at, lr_step=lr_step)
    assert config.milestones == milestones
    expected = reference_lrs(epochs, milestones, step_before=lr_step == "before-epoch")
    np.testing.assert_allclose([config.lr_at(e) for e in range(1, epochs + 1)], expected, rtol=1e-12)
    # CIFAR's full-shot run (train_cifar.py): 30 for epochs 1-9, 3 for 10-19, 0.3 for 20-30; ImageNet's one later.
    first = milestones[0] if lr_step == "before-epoch" else milestones[0] + 1
    assert config.lr_at(first - 1) == 30.0 and config.lr_at(first) == pytest.approx(3.0)


def test_checked_epochs_are_the_multiples_of_the_cadence():
    for epochs, every in ((30, 1), (100, 5), (30, 2), (100, 10), (7, 3)):
        expected = [epoch for epoch in range(1, epochs + 1) if epoch % every == 0]  # `if epoch % args.test_freq == 0`
        assert SDCLRProbeConfig(epochs=epochs, val_every=every).validated_epochs() == expected
    with pytest.raises(FastltError, match="every 4 epochs never runs in 3 epochs"):
        SDCLRProbeConfig(epochs=3, val_every=4)
    with pytest.raises(FastltError, match="epochs and batch size"):
        SDCLRProbeConfig(epochs=0)
    with pytest.raises(FastltError, match="lr_step must be one of"):
        SDCLRProbeConfig(lr_step="per-step")


def test_fc_is_initialised_normal_0_01_with_zero_bias():
    fc = sdclr_fc(512, 100, torch.Generator().manual_seed(3)).requires_grad_(False)
    # train_cifar.py / train_imagenet.py cvt_state_dict: torch.zeros(C, D).normal_(mean=0.0, std=0.01), zero bias.
    expected = torch.zeros(100, 512).normal_(mean=0.0, std=0.01, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fc.weight, expected) and torch.equal(fc.bias, torch.zeros(100))
    assert abs(float(fc.weight.std()) - 0.01) < 2e-4 and abs(float(fc.weight.mean())) < 2e-4  # 51,200 draws


def reference_accuracy(output, target, topk):
    """SDCLR utils.py:accuracy for one batch: percent of targets among the top-k outputs."""
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0) * 100.0 / target.size(0) for k in topk]


def test_held_out_accuracy_is_sdclrs_top1_and_top5():
    generator = torch.Generator().manual_seed(0)
    fc = sdclr_fc(6, 10, generator)
    features, labels = torch.randn(200, 6, generator=generator), torch.randint(0, 10, (200,), generator=generator)
    top1, top5 = reference_accuracy(fc(features), labels, (1, 5))
    assert float(held_out_accuracy(fc, features, labels, 1)) == pytest.approx(float(top1))
    assert float(held_out_accuracy(fc, features, labels, 5)) == pytest.approx(float(top5))
    assert float(top1) < float(top5) < 100


def reference_fc_training(features, labels, held_features, held_labels, classes, epochs, milestones, lr, seed,
                          step_before, test_freq, topk):
    """A transcription of SDCLR's fine-tuning loop on augmentation-invariant features (one batch per epoch):
    cvt_state_dict's fc init, SGD(momentum 0.9, wd 0) + MultiStepLR stepped before (train_cifar.py) or after
    (train_imagenet.py) each epoch, the held-out check when ``epoch % test_freq == 0``, and
    ``is_best = acc > best_prec1`` from best_prec1 = 0. Returns the checked accuracies, best epoch and its fc."""
    fc = nn.Linear(features.shape[1], classes)
    with torch.no_grad():
        fc.weight.copy_(torch.zeros(classes, features.shape[1]).normal_(0.0, 0.01,
                                                                        generator=torch.Generator().manual_seed(seed)))
        fc.bias.zero_()
    optimizer = torch.optim.SGD(fc.parameters(), lr=lr, momentum=0.9, weight_decay=0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    ta, best_prec1, best = {}, 0, None
    for epoch in range(1, epochs + 1):
        if step_before:
            scheduler.step()
        loss = F.cross_entropy(fc(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if not step_before:
            scheduler.step()
        if epoch % test_freq == 0:
            with torch.no_grad():
                vali_tacc = float(reference_accuracy(fc(held_features), held_labels, (topk,))[0])
            ta[epoch] = vali_tacc
            if vali_tacc > best_prec1:
                best_prec1, best = vali_tacc, (epoch, fc.weight.detach().clone(), fc.bias.detach().clone())
    return ta, best


@pytest.mark.parametrize("lr_step, val_every, select, classes", [
    ("before-epoch", 1, "top1", 3),  # CIFAR full-shot
    ("before-epoch", 2, "top1", 3),  # CIFAR few-shot's cadence (every 5 there)
    ("after-epoch", 2, "top5", 8),  # ImageNet-100: stepped after, every 2nd epoch, top-5
])
def test_fc_training_follows_the_reference_loop(lr_step, val_every, select, classes):
    images, labels = colour_data(60, 0, boost=25, classes=classes)  # hard enough that the epochs differ
    held_images, held_labels = colour_data(60, 1, boost=25, classes=classes)
    backbone = PooledColour(width=0 if classes == 3 else 6).train()  # training mode: the probe must freeze BN
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    config = SDCLRProbeConfig(epochs=8, decay_at=(0.25, 0.5), lr_step=lr_step, lr=0.5, batch_size=64, padding=0,
                              val_every=val_every, select=select, seed=5)  # one batch per epoch; milestones 2, 4
    with torch.no_grad():
        held_features = backbone.eval()(held_images.permute(0, 3, 1, 2).float() / 255)
        features = backbone(images.permute(0, 3, 1, 2).float() / 255)
    backbone.train()
    probe = train_fc_through_backbone(backbone, images, labels, held_features, held_labels, classes, config)
    assert backbone.training  # its mode is restored
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key  # batch norm statistics frozen, weights untouched

    history, (best_epoch, weight, bias) = reference_fc_training(
        features, labels, held_features, held_labels, classes, 8, [2, 4], 0.5, 5, lr_step == "before-epoch",
        val_every, int(select[-1]))
    assert list(probe.held_out_accuracy) == list(history)
    assert list(probe.held_out_accuracy.values()) == pytest.approx(list(history.values()), abs=1e-4)
    assert probe.best_epoch == best_epoch
    torch.testing.assert_close(probe.fc.weight, weight, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(probe.fc.bias, bias, rtol=1e-4, atol=1e-6)
    assert len(set(history.values())) > 1 and max(history.values()) < 100  # the choice of the best is tested


def test_augmented_training_learns_and_is_seeded():
    images, labels = colour_data(120, 2)
    held_images, held_labels = colour_data(60, 3)
    backbone = PooledColour().eval()
    held_features = backbone(held_images.permute(0, 3, 1, 2).float() / 255).detach()
    config = SDCLRProbeConfig(epochs=6, lr=1.0, batch_size=32, seed=1)  # padding 4: the crops differ
    first = train_fc_through_backbone(backbone, images, labels, held_features, held_labels, 3, config)
    again = train_fc_through_backbone(backbone, images, labels, held_features, held_labels, 3, config)
    assert max(first.held_out_accuracy.values()) > 80.0
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


def test_recipe_checks_the_probe_settings():
    from fastlt.recipe import recipe_from_dict

    with pytest.raises(FastltError, match="eval.sdclr_crop: resized needs eval.center_crop"):
        recipe_from_dict({"eval": {"sdclr_crop": "resized"}}, "test")
    assert recipe_from_dict({"eval": {"sdclr_crop": "resized", "center_crop": 224}}, "test").eval.center_crop == 224
    with pytest.raises(FastltError, match=r"eval.sdclr_few_shot_val_every: must not exceed eval.sdclr_few_shot_epochs "
                                          r"\(4\), or no epoch is checked, got 5"):
        recipe_from_dict({"eval": {"sdclr_few_shot_epochs": 4}}, "test")
    with pytest.raises(FastltError, match="eval.sdclr_select"):
        recipe_from_dict({"eval": {"sdclr_select": "top3"}}, "test")
