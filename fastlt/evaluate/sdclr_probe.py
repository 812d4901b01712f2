"""The SDCLR protocol's linear layer: trained through the frozen backbone on augmented images.

Unlike BCL's probe, which fits on features extracted once, SDCLR trains only the fc while
every batch goes through the backbone again, with RandomCrop(pad 4) and a horizontal flip
(CIFAR), or RandomResizedCrop and a flip (ImageNet-100: 224 px from the 256 px store, batch
512), made here on the device. The backbone stays in eval mode (batch norm frozen) and under
no_grad, so only the fc learns: SGD with lr 30 and momentum 0.9, batches of 128, the
learning rate x0.1 at 1/3 and 2/3 of the epochs (10 and 20 of 30; 40 and 60 of 100 for
the few-shot list), and the epoch with the best accuracy on the held-out list is kept
(docs/evaluation.md). Held-out and test images are not augmented, so their features are
extracted once and each epoch's check is one matrix product.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlt.augment.functional import padded_crop, resized_crop, to_float
from fastlt.augment.views import sample_resized_crop_boxes
from fastlt.errors import FastltError
from fastlt.evaluate.linear import predict_linear, seeded_linear


PROBE_CROPS = ("padded", "resized")
RESIZED_SCALE, RESIZED_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop defaults


@dataclass(frozen=True)
class SDCLRProbeConfig:
    """SDCLR's fc training; defaults are its full-shot CIFAR settings."""

    epochs: int = 30
    decay_at: tuple[float, ...] = (1 / 3, 2 / 3)  # fractions of the epochs where the lr drops x0.1
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
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

    @property
    def milestones(self) -> list[int]:
        """Epochs (0-based) from which each decay applies: 10 and 20 for 30 epochs, 40 and 60 for 100."""
        return [round(fraction * self.epochs) for fraction in self.decay_at]


@dataclass(frozen=True)
class SDCLRProbe:
    """The fc of the best held-out epoch, that epoch (1-based), and the held-out accuracy of every epoch."""

    fc: nn.Linear
    best_epoch: int
    held_out_accuracy: list[float]


def augment_batch(images: Tensor, generator: torch.Generator, config: SDCLRProbeConfig) -> Tensor:
    """uint8 [B, 3, H, W] -> float views in [0, 1], channels_last, a random flip per image and either a
    random padded crop of the same size or torchvision's RandomResizedCrop (scale 0.08..1, ratio
    3/4..4/3, bilinear) to ``crop_size``."""
    batch, _, height, width = images.shape
    if config.crop == "resized":
        boxes = sample_resized_crop_boxes(batch, height, width, RESIZED_SCALE, RESIZED_RATIO, generator)
        flips = torch.rand(batch, generator=generator, device=images.device) < 0.5
        views = resized_crop(to_float(images), boxes, (config.crop_size, config.crop_size), flips, "bilinear")
        return views.clamp_(0.0, 1.0).contiguous(memory_format=torch.channels_last)
    offsets = torch.randint(0, 2 * config.padding + 1, (batch, 2), generator=generator, device=images.device)
    flips = torch.rand(batch, generator=generator, device=images.device) < 0.5
    return to_float(padded_crop(images, offsets, config.padding, flips)).contiguous(memory_format=torch.channels_last)


def train_fc_through_backbone(
    backbone: nn.Module,
    images: Tensor,
    labels: Tensor,
    held_out_features: Tensor,
    held_out_labels: Tensor,
    num_classes: int,
    config: SDCLRProbeConfig,
    autocast_dtype: torch.dtype | None = None,
) -> SDCLRProbe:
    """Fit an fc on the frozen ``backbone``'s features of augmented uint8 NHWC ``images``; keep the best held-out epoch.

    ``backbone`` must already be on the images' device; its train/eval flags are restored
    afterwards. The held-out features come from the same backbone without augmentation.
    Randomness (initialisation, batch order, crops, flips) comes from one generator seeded
    with ``config.seed``. A tie in held-out accuracy keeps the earlier epoch.
    """
    if images.ndim != 4 or images.dtype != torch.uint8 or len(images) != len(labels) or len(images) == 0:
        raise FastltError(f"SDCLR probe: expected uint8 [N, H, W, 3] images with one label each, got "
                          f"{images.dtype} {tuple(images.shape)} and {len(labels)} labels")
    device = images.device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    labels = labels.to(device=device, dtype=torch.long)
    fc = seeded_linear(held_out_features.shape[1], num_classes, generator)
    optimizer = torch.optim.SGD(fc.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, config.milestones, gamma=0.1)
    nchw = images.permute(0, 3, 1, 2)
    modes = [(module, module.training) for module in backbone.modules()]
    backbone.eval()
    best_state, best_epoch, history = None, 0, []
    try:
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(len(images), generator=generator, device=device)
            for batch in order.split(config.batch_size):
                views = augment_batch(nchw[batch], generator, config)
                with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype,
                                                     enabled=autocast_dtype is not None):
                    features = backbone(views).float()
                loss = F.cross_entropy(fc(features), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            schedule.step()
            predictions = predict_linear(fc, held_out_features)
            accuracy = 100.0 * float((predictions == held_out_labels.to(predictions.device)).float().mean())
            history.append(accuracy)
            if best_state is None or accuracy > max(history[:-1]):
                best_state = {name: value.detach().clone() for name, value in fc.state_dict().items()}
                best_epoch = epoch
    finally:
        for module, training in modes:
            module.training = training
    fc.load_state_dict(best_state)
    return SDCLRProbe(fc.eval().requires_grad_(False), best_epoch, history)
