"""Frozen features: the backbone run once over a set of uint8 images, without augmentation or with one
seeded random crop per image.

Linear probes and kNN train on these features many times over, so they are computed once,
kept on the device as float32 [N, D], and everything after works on that matrix. The
Temperature-Schedules notebooks take the long-tailed split's features through their training
transform, RandomCrop(pad 4) + flip, once (``PaddedCropViews``); the SDCLR probe draws the same
views for every batch it trains on.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fastlt.augment.functional import padded_crop
from fastlt.errors import FastltError
from fastlt.progress import Advance, unwatched


@dataclass(frozen=True)
class PaddedCropViews:
    """torchvision's RandomCrop(size of the image, padding, fill 0) then RandomHorizontalFlip(0.5), drawn for
    ``count`` images at once: each image's crop offsets (top, left) in [0, 2 padding] and its flip."""

    offsets: Tensor  # int64 [count, 2]
    flips: Tensor  # bool [count]
    padding: int

    @classmethod
    def draw(cls, count: int, padding: int, generator: torch.Generator) -> PaddedCropViews:
        """The offsets, then the flips, from ``generator`` (on its device)."""
        device = generator.device
        offsets = torch.randint(0, 2 * padding + 1, (count, 2), generator=generator, device=device)
        return cls(offsets, torch.rand(count, generator=generator, device=device) < 0.5, padding)

    def apply(self, images: Tensor, start: int = 0) -> Tensor:
        """The views of images ``start`` .. ``start + len(images)`` of the drawn ones; [B, C, H, W], any dtype."""
        rows = slice(start, start + len(images))
        return padded_crop(images, self.offsets[rows], self.padding, self.flips[rows])


def center_square(images: Tensor, side: int) -> Tensor:
    """The centre ``side`` x ``side`` of [..., H, W] images (all of them for side 0), at torchvision's
    ``CenterCrop`` offsets; a side larger than the images is an error."""
    if side == 0:
        return images
    height, width = images.shape[-2:]
    if side > min(height, width):
        raise FastltError(f"eval.center_crop {side}: larger than the {height}x{width} images")
    top, left = int(round((height - side) / 2.0)), int(round((width - side) / 2.0))
    return images[..., top:top + side, left:left + side]


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block (batch norm on its running statistics, frozen); afterwards every
    submodule's own train/eval flag is put back, so the caller's model comes back as it went in."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in modes:
            submodule.training = training


def extract_features(
    backbone: nn.Module,
    images: np.ndarray | Tensor,
    device: torch.device | str,
    batch_size: int = 512,
    autocast_dtype: torch.dtype | None = None,
    center_crop: int = 0,
    views: PaddedCropViews | None = None,
    after_batch: Advance = unwatched,
) -> Tensor:
    """Features of uint8 NHWC images as float32 [N, D] on ``device``, backbone in eval mode.

    ``center_crop`` > 0 feeds the centre square of that side instead of the whole image, with
    torchvision's ``CenterCrop`` offsets: on a store kept at 256 px that is the ImageNet test
    view, Resize(256) + CenterCrop(224). ``views`` (drawn for all N images, on ``device``)
    replaces each image by its random crop and flip, after the centre crop; drawn up front,
    they do not depend on the batch size.

    Each batch moves to the device as uint8 (4x less traffic than float), becomes float in
    [0, 1] there, and is fed as NCHW in channels_last memory (a permute of NHWC is exactly
    that layout, so no copy). The backbone normalises inside itself. ``autocast_dtype``
    (e.g. torch.bfloat16) runs the forward under autocast; the result is float32 either way.
    Every module's train/eval flag is restored afterwards, so a caller mid-training can
    evaluate without side effects. torch.no_grad rather than inference_mode: inference
    tensors cannot be saved for backward, and the linear probe trains on these features.
    ``after_batch(n)`` runs after each batch of n images (linear-eval's progress line).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise FastltError(f"images: expected uint8 [N, H, W, 3], got shape {tuple(images.shape)}")
    if images.dtype not in (np.uint8, torch.uint8):
        raise FastltError(f"images: expected dtype uint8, got {images.dtype}")
    if len(images) == 0:
        raise FastltError("images: no images to extract features from")
    if batch_size < 1:
        raise FastltError(f"batch_size: must be >= 1, got {batch_size}")
    if views is not None and len(views.flips) != len(images):
        raise FastltError(f"views: drawn for {len(views.flips)} images, got {len(images)}")
    device = torch.device(device)
    pinned = device.type == "cuda"
    chunks = []
    with evaluation_mode(backbone), torch.no_grad(), \
            torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            # np.array copies the slice: a read-only memory map cannot back a tensor.
            batch = torch.from_numpy(np.array(batch)) if isinstance(batch, np.ndarray) else batch
            if pinned and batch.device.type == "cpu":
                batch = batch.pin_memory()
            batch = center_square(batch.to(device, non_blocking=pinned).permute(0, 3, 1, 2), center_crop)
            batch = batch if views is None else views.apply(batch, start)
            pixels = batch.float().div_(255).contiguous(memory_format=torch.channels_last)
            chunks.append(backbone(pixels).float())
            after_batch(len(pixels))
    return torch.cat(chunks)
