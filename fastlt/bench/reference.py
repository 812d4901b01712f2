"""The reference repositories' data path, per image: PIL + torchvision.transforms in a torch DataLoader.

This is what fastlt replaces, so the benchmark must run it as the reference code does:
a Dataset of uint8 arrays turned into a PIL image per item (as torchvision's CIFAR
datasets do; no decoding), the v1 transforms on PIL images, two views per image, and
``num_workers`` worker processes collating batches. BCL's views add RandAugment after
the grayscale step with a per-image firing probability and magnitude, drawn here per
image from the same distributions the batched benchmark uses.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fastlt.augment.randaugment import bcl_d_magnitude, bcl_i_magnitude
from fastlt.augment.views import ViewConfig

INTERPOLATION = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}
MAGNITUDE_BINS = 31  # torchvision's RandAugment bins 0..30 = BCL's magnitude M in [0, 30]


def simclr_transforms(config: ViewConfig) -> tuple[T.Compose, T.Compose]:
    """(crop .. grayscale, blur .. ToTensor) of the reference SimCLR views for ``config``; RandAugment goes between."""
    before = T.Compose([
        T.RandomResizedCrop(config.size, scale=config.scale, ratio=config.ratio,
                            interpolation=INTERPOLATION[config.interpolation]),
        T.RandomHorizontalFlip(config.flip_p),
        T.RandomApply([T.ColorJitter(*config.jitter)], p=config.jitter_p),
        T.RandomGrayscale(config.grayscale_p),
    ])
    after = [T.ToTensor()]
    if config.blur_p > 0:
        after.insert(0, T.RandomApply([T.GaussianBlur(config.blur_kernel_size, config.blur_sigma)], p=config.blur_p))
    return before, T.Compose(after)


class PerImageRandAugment:
    """BCL's boosted RandAugment on one PIL image: ``num_ops`` stages, each firing with the image's weight w
    at magnitude M (torchvision's RandAugment with 31 bins, one op per stage)."""

    def __init__(self, num_ops: int):
        self.num_ops = num_ops
        self.op = T.RandAugment(num_ops=1, num_magnitude_bins=MAGNITUDE_BINS)

    def __call__(self, image: Image.Image, weight: float, magnitude: float) -> Image.Image:
        self.op.magnitude = min(MAGNITUDE_BINS - 1, max(0, int(round(magnitude))))
        for _ in range(self.num_ops):
            if float(torch.rand(())) < weight:
                image = self.op(image)
        return image


def draw_strength(mapping: str) -> tuple[float, float]:
    """One image's (w, M): w ~ U(0, 1) and BCL's magnitude for it (BCL-D's U is shared by the image's views)."""
    weight = torch.rand(())
    magnitude = bcl_i_magnitude(weight) if mapping == "bcl-i" else bcl_d_magnitude(weight, torch.rand(()))
    return float(weight), float(magnitude)


class ReferenceViews:
    """``count`` independent views of one PIL image -> float32 [3, size, size] tensors in [0, 1].

    With ``randaugment_ops`` > 0 each view gets BCL's RandAugment stage after grayscale, at one
    strength per image shared by its views (``mapping`` bcl-i or bcl-d).
    """

    def __init__(self, config: ViewConfig, count: int = 2, randaugment_ops: int = 0, mapping: str = "bcl-i"):
        self.before, self.after = simclr_transforms(config)
        self.count = count
        self.randaugment = PerImageRandAugment(randaugment_ops) if randaugment_ops > 0 else None
        self.mapping = mapping

    def describe(self) -> str:
        """One line for the result file: what runs per image."""
        steps = [repr(t).replace("\n", "").replace("    ", " ") for t in self.before.transforms]
        if self.randaugment is not None:
            steps.append(f"{self.randaugment.num_ops} x [p=w] RandAugment(num_ops=1, num_magnitude_bins=31, "
                         f"magnitude=M({self.mapping}))")
        steps += [repr(t).replace("\n", "").replace("    ", " ") for t in self.after.transforms]
        return " -> ".join(steps)

    def __call__(self, image: Image.Image) -> tuple[Tensor, ...]:
        strength = draw_strength(self.mapping) if self.randaugment is not None else None
        views = []
        for _ in range(self.count):
            view = self.before(image)
            if strength is not None:
                view = self.randaugment(view, *strength)
            views.append(self.after(view))
        return tuple(views)


class PILImages(Dataset):
    """uint8 HWC images kept in memory, made into a PIL image per item as torchvision's CIFAR10 does,
    returned as (*views, label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, views: Callable[[Image.Image], tuple[Tensor, ...]]):
        self.images = images
        self.labels = labels
        self.views = views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple:
        return (*self.views(Image.fromarray(self.images[index])), int(self.labels[index]))


def reference_loader(dataset: Dataset, batch: int, workers: int, drop_last: bool = False,
                     pin_memory: bool = False) -> DataLoader:
    """The reference repositories' loader: shuffled, ``workers`` processes kept alive between epochs."""
    return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=drop_last,
                      persistent_workers=workers > 0, pin_memory=pin_memory)
