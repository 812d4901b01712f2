"""SupCon's and SelfCon's linear evaluation: linear classifiers on the frozen encoder, trained on augmented views.

Both references' main_linear.py (SupContrast's; SelfCon's, which adds ``--subnet``): the encoder
in eval mode under no_grad (SupContrast :135, :155-156; SelfCon :274, :294-296), each batch a fresh
RandomResizedCrop(size, scale 0.2..1) + flip of the training images (SupContrast main_ce.py:131,
SelfCon :136; made here on the device), nn.Linear classifiers with their default initialisation,
SGD with momentum 0.9 (util.py set_optimizer), the lr multiplied by ``decay_rate`` after each of
``decay_epochs`` (util.py adjust_learning_rate, set at the start of each 1-based epoch:
lr x rate^#{d < epoch}), and the test set checked after every epoch. The reported accuracy is
the best epoch's (SupContrast :256-257 best_acc; a tie keeps the earlier).

SelfCon's ``--subnet`` trains a second classifier on the sub-network exit, and its ensemble
averages the two classifiers' logits (SelfCon main_linear.py:368-370); each of the three rows keeps
its own best epoch (:336-337, :392-399). Here one encoder pass per batch feeds every classifier
(the reference draws a second pass of augmented batches for the sub-network's classifier,
:443-444). Test images are not augmented, so their features are extracted once and each epoch's
check is a matrix product; the best epochs and their predictions stay on the device until the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlt.errors import FastltError
from fastlt.evaluate.linear import SgdClassifierTraining, seeded_linear
from fastlt.evaluate.probe_views import frozen_features_epoch, resized_crop_views
from fastlt.measure.features import evaluation_mode
from fastlt.progress import Advance, unwatched

CROP_SCALE = (0.2, 1.0)  # main_linear.py's RandomResizedCrop(size, scale=(0.2, 1.))


@dataclass(frozen=True)
class SupConProbeConfig(SgdClassifierTraining):
    """The classifiers' training; defaults are SelfCon's CIFAR scripts (scripts/*_represent.sh)."""

    protocol: ClassVar[str] = "supcon probe"
    decay_epochs: tuple[int, ...] = (60, 80)
    decay_rate: float = 0.1
    size: int = 32  # side of the training views (the test views' side)
    epochs: int = 100
    lr: float = 3.0
    batch_size: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size < 1:
            raise FastltError(f"supcon probe: view size must be >= 1, got {self.size}")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 1-based ``epoch``: epochs 1..60 at lr, 61..80 at lr x 0.1, 81.. at lr x 0.01 for the
        defaults."""
        return self.lr * self.decay_rate ** sum(epoch > decay for decay in self.decay_epochs)


@dataclass(frozen=True)
class ClassifierResult:
    """One reported row: the best epoch (1-based), its test predictions, and every epoch's test accuracy."""

    best_epoch: int
    predictions: Tensor
    test_accuracy: list[float]


def train_linear_classifiers(
    encoder: nn.Module,
    images: Tensor,
    labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    heads: dict[str, int],
    num_classes: int,
    config: SupConProbeConfig,
    ensemble: str = "",
    autocast_dtype: torch.dtype | None = None,
    after_epoch: Advance = unwatched,
) -> dict[str, ClassifierResult]:
    """Train one classifier per entry of ``heads`` (name -> width of its block of the encoder's features, in order)
    on augmented uint8 NHWC ``images``; the best test epoch of each, and of ``ensemble`` (the classifiers' mean
    logits) when named.

    ``encoder`` maps float images to features [B, sum of the widths], already on the images'
    device; its train/eval flags are restored afterwards. ``test_features`` are its features of
    the unaugmented test images. Randomness (initialisation, batch order, crops, flips) comes
    from one generator seeded with ``config.seed``. ``after_epoch`` runs after each epoch (the progress line).
    """
    if images.ndim != 4 or images.dtype != torch.uint8 or len(images) != len(labels) or len(images) == 0:
        raise FastltError(f"supcon probe: expected uint8 [N, H, W, 3] images with one label each, got "
                          f"{images.dtype} {tuple(images.shape)} and {len(labels)} labels")
    widths = list(heads.values())
    if test_features.shape[1] != sum(widths):
        raise FastltError(f"supcon probe: the heads take {sum(widths)} features, the encoder gives "
                          f"{test_features.shape[1]}")
    device = images.device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    labels = labels.to(device=device, dtype=torch.long)
    test_labels = test_labels.to(device=device, dtype=torch.long)
    classifiers = [seeded_linear(width, num_classes, generator) for width in widths]
    parameters = [p for classifier in classifiers for p in classifier.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    names = list(heads) + ([ensemble] if ensemble else [])
    best_accuracy = {name: torch.full((), -1.0, device=device) for name in names}
    best_epoch = {name: torch.zeros((), dtype=torch.long, device=device) for name in names}
    best_predictions = {name: torch.zeros(len(test_labels), dtype=torch.long, device=device) for name in names}
    history: dict[str, list[Tensor]] = {name: [] for name in names}
    nchw = images.permute(0, 3, 1, 2)
    test_blocks = test_features.float().split(widths, dim=1)
    with evaluation_mode(encoder):
        for epoch in range(1, config.epochs + 1):
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(epoch)
            for batch, features in frozen_features_epoch(
                    encoder, nchw, config.batch_size, generator,
                    lambda pixels: resized_crop_views(pixels, generator, config.size, CROP_SCALE), autocast_dtype):
                loss = sum(F.cross_entropy(classifier(block), labels[batch])
                           for classifier, block in zip(classifiers, features.split(widths, dim=1)))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                logits = [classifier(block) for classifier, block in zip(classifiers, test_blocks)]
                if ensemble:
                    logits.append(torch.stack(logits).mean(0))
                for name, scores in zip(names, logits):
                    predictions = scores.argmax(dim=1)
                    accuracy = 100.0 * (predictions == test_labels).float().mean()
                    better = accuracy > best_accuracy[name]
                    best_accuracy[name] = torch.where(better, accuracy, best_accuracy[name])
                    best_epoch[name] = torch.where(better, epoch, best_epoch[name])
                    best_predictions[name] = torch.where(better, predictions, best_predictions[name])
                    history[name].append(accuracy)
            after_epoch()
    return {name: ClassifierResult(int(best_epoch[name]), best_predictions[name], torch.stack(history[name]).tolist())
            for name in names}
