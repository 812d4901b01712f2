"""The SDCLR protocol's linear layer: trained through the frozen backbone on augmented images.

Unlike BCL's probe, which fits on features extracted once, SDCLR trains only the fc while
every batch goes through the backbone again, with RandomCrop(pad 4) and a horizontal flip
(CIFAR), or RandomResizedCrop and a flip (ImageNet-100: 224 px from the 256 px store, batch
512), made here on the device. The backbone stays in eval mode (batch norm frozen) and under
no_grad, so only the fc learns, from N(0, 0.01) weights and zero bias: SGD with lr 30 and
momentum 0.9, batches of 128, the learning rate x0.1 at 1/3 and 2/3 of the epochs (10 and 20
of 30; 40 and 60 of 100 for the few-shot list), stepped before each epoch as SDCLR's
train_cifar.py does or after it as its train_imagenet.py does. Every ``val_every``-th epoch
is checked on the held-out list (top-1 or top-5 accuracy) and the best checked epoch is kept
(docs/evaluation.md). Held-out and test images are not augmented, so their features are
extracted once and each check is one matrix product, kept on the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlt.augment.functional import to_float
from fastlt.errors import FastltError
from fastlt.evaluate.probe_views import frozen_features_epoch, resized_crop_views
from fastlt.measure.features import PaddedCropViews, evaluation_mode
from fastlt.progress import Advance, unwatched

PROBE_CROPS = ("padded", "resized")
RESIZED_SCALE, RESIZED_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop defaults
LR_STEPS = ("before-epoch", "after-epoch")  # where the reference calls scheduler.step() (CIFAR, ImageNet code)
SELECTIONS = {"top1": 1, "top5": 5}  # the held-out accuracy that picks the epoch (CIFAR, ImageNet code)
FC_INIT_STD = 0.01  # SDCLR's cvt_state_dict: fc.weight ~ N(0, 0.01), fc.bias = 0


@dataclass(frozen=True)
class SDCLRProbeConfig:
    """SDCLR's fc training; defaults are its full-shot CIFAR settings."""

    epochs: int = 30
    decay_at: tuple[float, ...] = (1 / 3, 2 / 3)  # fractions of the epochs: the scheduler's milestones
    lr_step: str = "before-epoch"  # "before-epoch": x0.1 from epoch 10 (1-based) of 30; "after-epoch": from 11
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    val_every: int = 1  # the held-out check runs after every epoch that is a multiple of this
    select: str = "top1"  # "top1" or "top5" held-out accuracy picks the best checked epoch
    crop: str = "padded"  # "padded": RandomCrop(pad 4), same size; "resized": RandomResizedCrop(crop_size)
    padding: int = 4
    crop_size: int = 0  # "resized": the side of the training views (the test views' centre crop)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise FastltError(f"SDCLR probe: epochs and batch size must be >= 1, got {self.epochs} / {self.batch_size}")
        if self.crop not in PROBE_CROPS or (self.crop == "resized" and self.crop_size < 1):
            raise FastltError(f"SDCLR probe: crop must be one of {PROBE_CROPS} (resized with a crop size), "
                              f"got {self.crop!r} / {self.crop_size}")
        if self.lr_step not in LR_STEPS or self.select not in SELECTIONS:
            raise FastltError(f"SDCLR probe: lr_step must be one of {LR_STEPS} and select one of "
                              f"{tuple(SELECTIONS)}, got {self.lr_step!r} / {self.select!r}")
        if not 1 <= self.val_every <= self.epochs:
            raise FastltError(f"SDCLR probe: the held-out check every {self.val_every} epochs never runs in "
                              f"{self.epochs} epochs (it must be in 1..epochs)")

    @property
    def milestones(self) -> list[int]:
        """The scheduler's milestones (its --decreasing_lr): 10 and 20 for 30 epochs, 40 and 60 for 100."""
        return [round(fraction * self.epochs) for fraction in self.decay_at]

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 1-based ``epoch``: MultiStepLR(milestones, 0.1) after ``epoch`` scheduler steps when
        it steps before each epoch (SDCLR's train_cifar.py), after ``epoch - 1`` when it steps after
        (train_imagenet.py)."""
        steps = epoch if self.lr_step == "before-epoch" else epoch - 1
        return self.lr * 0.1 ** sum(milestone <= steps for milestone in self.milestones)

    def validated_epochs(self) -> list[int]:
        """The 1-based epochs after which the held-out check runs (the reference's ``epoch % test_freq == 0``)."""
        return list(range(self.val_every, self.epochs + 1, self.val_every))


@dataclass(frozen=True)
class SDCLRProbe:
    """The fc of the best checked epoch, that epoch (1-based), and the held-out accuracy of every checked epoch."""

    fc: nn.Linear
    best_epoch: int
    held_out_accuracy: dict[int, float]


def sdclr_fc(dim: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear(dim, num_classes) as SDCLR initialises it: weight ~ N(0, 0.01) drawn from ``generator`` (on its
    device), bias 0."""
    fc = nn.utils.skip_init(nn.Linear, dim, num_classes, device=generator.device)
    with torch.no_grad():
        fc.weight.normal_(0.0, FC_INIT_STD, generator=generator)
        fc.bias.zero_()
    return fc


def held_out_accuracy(fc: nn.Linear, features: Tensor, labels: Tensor, top: int) -> Tensor:
    """Percent of samples whose label is among the fc's ``top`` highest logits (top-1: the argmax), a 0-d tensor
    on the features' device (no host sync)."""
    with torch.no_grad():
        logits = fc(features.float())
        best = logits.topk(min(top, logits.shape[1]), dim=1).indices
        return 100.0 * (best == labels.to(best.device)[:, None]).any(dim=1).float().mean()


def augment_batch(images: Tensor, generator: torch.Generator, config: SDCLRProbeConfig) -> Tensor:
    """uint8 [B, 3, H, W] -> float views in [0, 1], channels_last, a random flip per image and either a
    random padded crop of the same size or torchvision's RandomResizedCrop (scale 0.08..1, ratio
    3/4..4/3, bilinear) to ``crop_size``."""
    if config.crop == "resized":
        return resized_crop_views(images, generator, config.crop_size, RESIZED_SCALE, RESIZED_RATIO)
    views = PaddedCropViews.draw(len(images), config.padding, generator).apply(images)
    return to_float(views).contiguous(memory_format=torch.channels_last)


def train_fc_through_backbone(
    backbone: nn.Module,
    images: Tensor,
    labels: Tensor,
    held_out_features: Tensor,
    held_out_labels: Tensor,
    num_classes: int,
    config: SDCLRProbeConfig,
    autocast_dtype: torch.dtype | None = None,
    after_epoch: Advance = unwatched,
) -> SDCLRProbe:
    """Fit an fc on the frozen ``backbone``'s features of augmented uint8 NHWC ``images``; keep the best checked epoch.

    ``backbone`` must already be on the images' device; its train/eval flags are restored
    afterwards. The held-out features come from the same backbone without augmentation.
    Randomness (initialisation, batch order, crops, flips) comes from one generator seeded
    with ``config.seed``. An epoch is best when its held-out accuracy beats every earlier
    checked epoch's (a tie keeps the earlier one); the best weights are kept on the device,
    and the accuracies are read once, at the end. ``after_epoch`` runs after each epoch (the progress line).
    """
    if images.ndim != 4 or images.dtype != torch.uint8 or len(images) != len(labels) or len(images) == 0:
        raise FastltError(f"SDCLR probe: expected uint8 [N, H, W, 3] images with one label each, got "
                          f"{images.dtype} {tuple(images.shape)} and {len(labels)} labels")
    device = images.device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    labels = labels.to(device=device, dtype=torch.long)
    fc = sdclr_fc(held_out_features.shape[1], num_classes, generator)
    optimizer = torch.optim.SGD(fc.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    nchw = images.permute(0, 3, 1, 2)
    best_accuracy = torch.full((), -1.0, device=device)
    best_epoch = torch.zeros((), dtype=torch.long, device=device)
    best_state = {name: value.detach().clone() for name, value in fc.state_dict().items()}
    checked: dict[int, Tensor] = {}
    validated = set(config.validated_epochs())
    with evaluation_mode(backbone):
        for epoch in range(1, config.epochs + 1):
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(epoch)
            for batch, features in frozen_features_epoch(backbone, nchw, config.batch_size, generator,
                                                         lambda pixels: augment_batch(pixels, generator, config),
                                                         autocast_dtype):
                loss = F.cross_entropy(fc(features), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if epoch in validated:
                accuracy = held_out_accuracy(fc, held_out_features, held_out_labels, SELECTIONS[config.select])
                better = accuracy > best_accuracy
                best_accuracy = torch.where(better, accuracy, best_accuracy)
                best_epoch = torch.where(better, epoch, best_epoch)
                for name, value in fc.state_dict().items():
                    best_state[name] = torch.where(better, value.detach(), best_state[name])
                checked[epoch] = accuracy
            after_epoch()
    fc.load_state_dict(best_state)
    history = dict(zip(checked, torch.stack(list(checked.values())).tolist()))
    return SDCLRProbe(fc.eval().requires_grad_(False), int(best_epoch), history)
