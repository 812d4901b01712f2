"""Batched, device-side augmentation: every op runs on a whole batch with per-sample parameters.

functional   crop+resize+flip, colour ops, grayscale, Gaussian blur; each equal per image to
             torchvision.transforms.v2.functional on the same parameters
views        the SimCLR view pipeline (ViewConfig, SimCLRViews) and its batched
             RandomResizedCrop sampler; all randomness from a caller's torch.Generator
randaugment  BCL's per-sample boosted RandAugment, plugged into SimCLRViews as its extra stage
"""
from fastlt.augment.views import (
    SimCLRViews,
    ViewConfig,
    ViewParams,
    sample_resized_crop_boxes,
)

__all__ = ["SimCLRViews", "ViewConfig", "ViewParams", "sample_resized_crop_boxes"]
