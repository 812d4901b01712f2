"""FlatCLR's fine-tuning evaluation (Junya-Chen/FlatCLR fine_tune.py ``train_ft``): the whole network trained with
a new linear classifier (docs/evaluation.md).

What train_ft computes: the pretrained backbone (its projection head dropped) and a fresh
Linear(D, C) (SupervisedHead, models/utils.py:93-100: an MLPLayer without hidden layers), SGD over
every parameter at a constant lr 1.6 (fc_lr; fc_scheduler is never used there), momentum 0.9,
weight decay 0, batches of 4096 (fc_batch_size), up to 100 epochs (fc_epochs), unaugmented
images. It never calls model.train() or model.eval(), so the model stays in train mode
throughout: batch norm normalises with batch statistics in training AND when the test set is
scored (``batch_norm="train"``); ``"eval"`` scores with the running statistics instead. After
every epoch the test set is scored; the reported accuracy is the best epoch's and training
stops once 5 epochs follow the best one (fine_tune.py:98-102). ``select="held-out"`` makes the
held-out list pick that epoch (and stop early) instead, reporting the test accuracy of the
epoch it picks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlt.errors import FastltError
from fastlt.evaluate.linear import SgdClassifierTraining, seeded_linear
from fastlt.evaluate.probe_views import plain_pixels
from fastlt.progress import Advance, unwatched

BATCH_NORM_MODES = ("train", "eval")


@dataclass(frozen=True)
class FinetuneConfig(SgdClassifierTraining):
    """train_ft's settings: main.py's fc_* defaults."""

    protocol: ClassVar[str] = "finetune"
    patience: int = 5  # stop once this many epochs follow the best one; 0 = never stop early
    batch_norm: str = "train"  # "train": batch statistics when scoring too (the reference); "eval": running ones
    center_crop: int = 0  # the view of every image: its centre square of this side (0 = all of it)
    epochs: int = 100
    lr: float = 1.6
    batch_size: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patience < 0:
            raise FastltError(f"finetune: patience must be >= 0, got {self.patience}")
        if self.batch_norm not in BATCH_NORM_MODES:
            raise FastltError(f"finetune: batch_norm must be one of {BATCH_NORM_MODES}, got {self.batch_norm!r}")


@dataclass(frozen=True)
class FinetuneResult:
    """The selected epoch (1-based), the test predictions of that epoch and every run epoch's selection accuracy."""

    best_epoch: int
    predictions: Tensor
    selection_accuracy: list[float]


def scored(model: nn.Module, fc: nn.Linear, images: Tensor, config: FinetuneConfig,
           autocast_dtype: torch.dtype | None) -> Tensor:
    """Predicted classes of uint8 NHWC ``images``, in batches of ``config.batch_size`` in their order, the model in
    the mode ``config.batch_norm`` names (and left in train mode)."""
    model.train(config.batch_norm == "train")
    device = images.device
    nchw = images.permute(0, 3, 1, 2)
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        predictions = [fc(model(plain_pixels(nchw[start:start + config.batch_size], config.center_crop)).float())
                       .argmax(dim=1) for start in range(0, len(images), config.batch_size)]
    model.train()
    return torch.cat(predictions)


def finetune(
    backbone: nn.Module,
    images: Tensor,
    labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    feature_dim: int,
    num_classes: int,
    config: FinetuneConfig,
    held_out: tuple[Tensor, Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
    after_epoch: Advance = unwatched,
) -> FinetuneResult:
    """Fine-tune a copy of ``backbone`` with a fresh fc on uint8 NHWC ``images``; the epoch the test set (or the
    ``held_out`` images and labels) scores best, and the test predictions of that epoch.

    Every image tensor is on one device, the backbone's; ``backbone`` itself is not changed.
    Randomness (initialisation, batch order) comes from one generator seeded with
    ``config.seed``; the batches are shuffled every epoch. Accuracies are read from the device
    once per epoch, to decide whether to stop. ``after_epoch`` runs after each epoch (the progress line).
    """
    for name, tensor in (("images", images), ("test images", test_images)):
        if tensor.ndim != 4 or tensor.dtype != torch.uint8 or len(tensor) == 0:
            raise FastltError(f"finetune: {name} must be uint8 [N, H, W, 3], got {tensor.dtype} {tuple(tensor.shape)}")
    device = images.device
    model = copy.deepcopy(backbone).requires_grad_(True).train()
    generator = torch.Generator(device=device).manual_seed(config.seed)
    labels = labels.to(device=device, dtype=torch.long)
    fc = seeded_linear(feature_dim, num_classes, generator)
    optimizer = torch.optim.SGD([*model.parameters(), *fc.parameters()], lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    select_images, select_labels = held_out if held_out is not None else (test_images, test_labels)
    select_labels = select_labels.to(device=device, dtype=torch.long)
    nchw = images.permute(0, 3, 1, 2)
    history, best_epoch, best_predictions = [], 0, None
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(images), generator=generator, device=device)
        for batch in order.split(config.batch_size):
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = fc(model(plain_pixels(nchw[batch], config.center_crop))).float()
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        selection = scored(model, fc, select_images, config, autocast_dtype)
        history.append(100.0 * float((selection == select_labels).float().mean()))
        if history[-1] > max(history[:-1], default=-1.0):  # strictly better: a tie keeps the earlier epoch
            best_epoch = epoch
            best_predictions = selection if held_out is None else scored(model, fc, test_images, config,
                                                                         autocast_dtype)
        after_epoch()
        if config.patience and epoch - best_epoch >= config.patience:
            break
    return FinetuneResult(best_epoch, best_predictions, history)
