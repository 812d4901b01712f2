"""LoTaR's own linear evaluation (andrew15818/SimCLR train_lincls.py with run_lincls.sh), docs/lotar.md.

A fresh fc on the pretrained encoder, every other parameter frozen, but the model in TRAIN mode
while the fc trains (train_lincls.py:136-147): batch norm normalises each batch with its own
statistics and its running statistics move with every batch; the test (:149-156) is in eval
mode, with those moved statistics. Adam at lr 3e-4 (its default; run_lincls.sh sets none),
batch 256 (run_lincls.sh), 90 epochs, no augmentation (ToTensor only) on the whole balanced
train part, and the LAST epoch reported (:164-169) with its own many / medium / few cut
(:171-195): classes sorted by their count in the pretraining split, largest first (a stable
sort: ties in class order), the first C // 3 many, the last C // 3 few, the rest medium
(CIFAR-10 3 / 4 / 3, CIFAR-100 33 / 34 / 33).

train_lincls.py:97-99 rebuilds the stem convolution as Conv2d(3, 64, 3, stride 1) without
padding (pretraining used padding 1) and loads the trained 3x3 weights into it: each feature
map loses its one-pixel border. ``stem="unpadded"`` does the same to a copy of the backbone;
"as-trained" keeps padding 1. The reference tests after every epoch; only the last test is
reported, and testing changes nothing (eval mode, no step), so only the last one is computed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlt.errors import FastltError
from fastlt.evaluate.linear import ClassifierTraining, predict_linear, seeded_linear
from fastlt.evaluate.probe_views import frozen_features_epoch, plain_pixels
from fastlt.measure.features import extract_features
from fastlt.progress import Advance, unwatched

STEMS = ("unpadded", "as-trained")
REFERENCE_DATASET = "cifar10"  # the one data set train_lincls.py runs: its CIFAR-100 branch (:78-81) cannot run


def lotar_scope(dataset: str) -> str:
    """What a report of this protocol on the store ``dataset`` is: the reference's own run, or fastlt's analogue."""
    if dataset == REFERENCE_DATASET:
        return "whole train part, last epoch"
    return ("whole train part, last epoch; fastlt's analogue: train_lincls.py runs on CIFAR-10 only, its CIFAR-100 "
            "branch loads CIFAR-10 and stops at an AttributeError")


@dataclass(frozen=True)
class LoTaRProbeConfig(ClassifierTraining):
    """train_lincls.py as run_lincls.sh runs it."""

    protocol: ClassVar[str] = "lotar probe"
    stem: str = "unpadded"
    center_crop: int = 0  # the view of every image: its centre square of this side (0 = all of it)
    epochs: int = 90
    lr: float = 3e-4
    batch_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stem not in STEMS:
            raise FastltError(f"lotar probe: stem must be one of {STEMS}, got {self.stem!r}")


def lotar_groups(counts: np.ndarray) -> dict[str, np.ndarray]:
    """train_lincls.py's many / medium / few: classes by pretraining count, largest first, ties in class order; the
    first C // 3 many, the last C // 3 few, the rest medium."""
    order = np.argsort(-np.asarray(counts), kind="stable")
    third = len(order) // 3
    return {"many": np.sort(order[:third]), "medium": np.sort(order[third:len(order) - third]),
            "few": np.sort(order[len(order) - third:])}


def unpad_stem(backbone: nn.Module) -> None:
    """Set the stem convolution's padding to 0, as train_lincls.py:98 rebuilds it; the stem must be the CIFAR one
    (3x3, stride 1, padding 1), the one that script rebuilds."""
    stem = next(module for module in backbone.modules() if isinstance(module, nn.Conv2d))
    if stem.kernel_size != (3, 3) or stem.stride != (1, 1) or stem.padding != (1, 1):
        raise FastltError(f"eval.lotar_stem: 'unpadded' rebuilds the CIFAR stem (3x3 convolution, stride 1, "
                          f"padding 1), this backbone's first convolution is {stem.kernel_size[0]}x"
                          f"{stem.kernel_size[1]}, stride {stem.stride[0]}, padding {stem.padding[0]}; use "
                          f"'as-trained'")
    stem.padding = (0, 0)


def lotar_evaluation_model(backbone: nn.Module, stem: str) -> nn.Module:
    """A copy of ``backbone`` with every parameter frozen and the stem as ``stem`` says: the running statistics
    the fc's training moves are the copy's, never the checkpoint's."""
    model = copy.deepcopy(backbone).requires_grad_(False)
    if stem == "unpadded":
        unpad_stem(model)
    return model


@dataclass(frozen=True)
class LoTaRProbe:
    """The trained fc, the evaluated model (its batch-norm statistics moved) and its last-epoch test predictions."""

    fc: nn.Linear
    model: nn.Module
    predictions: Tensor


def train_lotar_fc(
    backbone: nn.Module,
    images: Tensor,
    labels: Tensor,
    test_images: np.ndarray | Tensor,
    feature_dim: int,
    num_classes: int,
    config: LoTaRProbeConfig,
    autocast_dtype: torch.dtype | None = None,
    after_epoch: Advance = unwatched,
) -> LoTaRProbe:
    """Train a fresh fc on a copy of ``backbone`` held in train mode over uint8 NHWC ``images``; predict the test
    images after the last epoch in eval mode.

    ``backbone`` (on the images' device) is not changed. Randomness (initialisation and batch
    order) comes from one generator seeded with ``config.seed``. ``after_epoch`` runs after each epoch (the
    progress line).
    """
    if images.ndim != 4 or images.dtype != torch.uint8 or len(images) != len(labels) or len(images) == 0:
        raise FastltError(f"lotar probe: expected uint8 [N, H, W, 3] images with one label each, got "
                          f"{images.dtype} {tuple(images.shape)} and {len(labels)} labels")
    device = images.device
    model = lotar_evaluation_model(backbone, config.stem).train()
    generator = torch.Generator(device=device).manual_seed(config.seed)
    labels = labels.to(device=device, dtype=torch.long)
    fc = seeded_linear(feature_dim, num_classes, generator)
    optimizer = torch.optim.Adam(fc.parameters(), lr=config.lr)
    nchw = images.permute(0, 3, 1, 2)
    for _ in range(config.epochs):
        for batch, features in frozen_features_epoch(model, nchw, config.batch_size, generator,  # batch statistics
                                                     lambda pixels: plain_pixels(pixels, config.center_crop),
                                                     autocast_dtype):
            loss = F.cross_entropy(fc(features), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        after_epoch()
    test_features = extract_features(model, test_images, device, autocast_dtype=autocast_dtype,
                                     center_crop=config.center_crop)  # eval mode: the moved running statistics
    fc = fc.eval().requires_grad_(False)
    return LoTaRProbe(fc, model.eval(), predict_linear(fc, test_features))
