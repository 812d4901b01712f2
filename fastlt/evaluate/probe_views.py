"""The images the protocols that train through the backbone feed it, made on the device for a whole batch.

uint8 [B, 3, H, W] in, float [B, 3, S, S] in [0, 1] out, channels_last (the backbone normalises
inside itself). ``resized_crop_views`` is the training view of SDCLR's ImageNet-100 fc (scale
0.08..1) and of SupCon's and SelfCon's linear classifiers (scale 0.2..1); ``plain_pixels`` is
the unaugmented view (ToTensor, or the ImageNet test view on a 256 px store) of fine-tuning and
LoTaR's fc.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from fastlt.augment.functional import resized_crop, to_float
from fastlt.augment.views import sample_resized_crop_boxes
from fastlt.measure.features import center_square

DEFAULT_RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default


def resized_crop_views(images: Tensor, generator: torch.Generator, size: int, scale: tuple[float, float],
                       ratio: tuple[float, float] = DEFAULT_RATIO) -> Tensor:
    """torchvision's RandomResizedCrop(size, scale, ratio) with bilinear interpolation, then RandomHorizontalFlip,
    per image: the boxes, then the flips, drawn from ``generator`` (on the images' device)."""
    batch, _, height, width = images.shape
    boxes = sample_resized_crop_boxes(batch, height, width, scale, ratio, generator)
    flips = torch.rand(batch, generator=generator, device=images.device) < 0.5
    views = resized_crop(to_float(images), boxes, (size, size), flips, "bilinear")
    return views.clamp_(0.0, 1.0).contiguous(memory_format=torch.channels_last)


def plain_pixels(images: Tensor, center_crop: int = 0) -> Tensor:
    """The images as they are (their centre ``center_crop`` square when > 0), as floats in [0, 1]."""
    return to_float(center_square(images, center_crop)).contiguous(memory_format=torch.channels_last)


def frozen_features_epoch(encoder: nn.Module, images: Tensor, batch_size: int, generator: torch.Generator,
                          views: Callable[[Tensor], Tensor],
                          autocast_dtype: torch.dtype | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch over uint8 [N, 3, H, W] ``images`` in a fresh order drawn from ``generator``: for each batch, its
    indices and the float32 features the encoder gives for ``views(batch images)``.

    The encoder runs under no_grad, in the mode the caller set (eval: frozen batch norm; LoTaR's train mode:
    batch statistics, running statistics moving), so only what is trained on the features learns. The views
    are drawn outside autocast, so their pixels do not depend on the precision.
    """
    device = images.device
    order = torch.randperm(len(images), generator=generator, device=device)
    for batch in order.split(batch_size):
        pixels = views(images[batch])
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            features = encoder(pixels).float()
        yield batch, features
