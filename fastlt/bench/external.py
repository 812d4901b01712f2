"""The other batched pipelines fastlt is measured against, built from the same view settings.

kornia.augmentation: per-sample random parameters on a batch tensor, on any torch device.
DALI: NVIDIA's data-loading library, here its CPU pipeline (``device_id=None``) fed from
memory; the GPU pipeline is out of scope because the reference data path is the host's.
Both are optional (``pip install 'fastlt[bench]'``): ``unavailable`` says why one cannot run.
"""
from __future__ import annotations

import importlib.util
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from fastlt.augment.views import ViewConfig

PACKAGES = {"kornia": "kornia", "dali": "nvidia.dali"}
INSTALL_HINT = "pip install 'fastlt[bench]'"


def unavailable(name: str) -> str:
    """Why the named contender cannot be imported here, or "" when it can."""
    module = PACKAGES[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return "" if found else f"{module} is not installed ({INSTALL_HINT})"


def kornia_views(config: ViewConfig) -> nn.Module:
    """RandomResizedCrop, flip, ColorJitter (p), RandomGrayscale (p) [, blur (p)] as kornia modules;
    each draws its parameters per sample (``same_on_batch=False``, kornia's default)."""
    import kornia.augmentation as K

    steps: list[nn.Module] = [
        K.RandomResizedCrop((config.size, config.size), scale=config.scale, ratio=config.ratio,
                            resample=config.interpolation.upper()),
        K.RandomHorizontalFlip(p=config.flip_p),
        K.ColorJitter(*config.jitter, p=config.jitter_p),
        K.RandomGrayscale(p=config.grayscale_p),
    ]
    if config.blur_p > 0:
        kernel = config.blur_kernel_size
        steps.append(K.RandomGaussianBlur((kernel, kernel), config.blur_sigma, p=config.blur_p))
    return nn.Sequential(*steps)


def dali_views(config: ViewConfig, source: Callable[[], np.ndarray], batch: int, threads: int, count: int = 2,
               seed: int = 0) -> Callable[[], tuple[Tensor, ...]]:
    """A built DALI CPU pipeline giving ``count`` views of each image of ``source()`` (uint8 [B, H, W, 3]);
    the returned callable runs one batch and hands back float32 [B, 3, size, size] tensors in [0, 1].

    Per view: fn.random_resized_crop (area ``scale``, aspect ``ratio``, cubic or linear with
    antialias), one fn.color_twist whose brightness, contrast, saturation and hue are drawn per
    sample and set to identity where the jitter coin (p) says no, saturation 0 where the grayscale
    coin says yes, then fn.crop_mirror_normalize for the flip coin, CHW and the 1/255 scaling.
    """
    from nvidia.dali import fn, pipeline_def, types

    interpolation = types.INTERP_CUBIC if config.interpolation == "bicubic" else types.INTERP_LINEAR
    (b_low, b_high), (c_low, c_high), (s_low, s_high), (h_low, h_high) = config.jitter_bounds()

    def coin(probability: float):
        return fn.cast(fn.random.coin_flip(probability=probability), dtype=types.FLOAT)

    def factor(jitter, low: float, high: float, identity: float):
        return identity + jitter * (fn.random.uniform(range=(low, high)) - identity)

    def one_view(images):
        views = fn.random_resized_crop(images, size=(config.size, config.size), random_area=config.scale,
                                       random_aspect_ratio=config.ratio, interp_type=interpolation,
                                       antialias=True)
        jitter = coin(config.jitter_p)
        keep_colour = 1.0 - coin(config.grayscale_p)
        views = fn.color_twist(views,
                               brightness=factor(jitter, b_low, b_high, 1.0),
                               contrast=factor(jitter, c_low, c_high, 1.0),
                               saturation=factor(jitter, s_low, s_high, 1.0) * keep_colour,
                               hue=factor(jitter, h_low * 360.0, h_high * 360.0, 0.0))  # degrees
        return fn.crop_mirror_normalize(views, mirror=fn.random.coin_flip(probability=config.flip_p),
                                        dtype=types.FLOAT, output_layout="CHW", mean=[0.0], std=[255.0])

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, seed=seed)
    def pipeline():
        images = fn.external_source(source=source, batch=True, layout="HWC", dtype=types.UINT8)
        return tuple(one_view(images) for _ in range(count))

    built = pipeline()
    built.build()

    def run() -> tuple[Tensor, ...]:
        return tuple(torch.from_numpy(np.asarray(output.as_tensor())) for output in built.run())

    return run
