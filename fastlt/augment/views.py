"""The SimCLR view pipeline, batched on the device with every random draw per sample.

crop + resize + flip -> colour jitter (p) -> grayscale (p) -> extra stage (BCL's RandAugment)
-> Gaussian blur (p). The parameters of a batch are drawn first (``SimCLRViews.sample``),
all from the caller's torch.Generator (the extra stage's draws included), then applied
(``SimCLRViews.apply``, which draws nothing); random choices are masks, so shapes never
depend on the draws and ``apply`` compiles into one static graph per batch shape
(``SimCLRViews.enable_compile``).
The pipeline ends at float32 in [0, 1]; mean/std normalisation is a layer of the model.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from fastlt.augment import functional as F
from fastlt.errors import FastltError
from fastlt.notices import quiet_cuda_home_probe

CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its fallback
JITTER_OPS = 4  # brightness, contrast, saturation, hue (the order is drawn per sample)
HUE_OP = 3  # index of the hue shift among the jitter ops (0..2 are functional.BRIGHTNESS..SATURATION)
SEQUENCE_FIELDS = ("scale", "ratio", "jitter", "blur_sigma")


class ExtraStage(Protocol):
    """A stage between grayscale and blur (BCL's RandAugment), split like the views into draw and apply.

    ``strength`` is the per-sample tensor the caller passes to the views, untouched.
    """

    def draw(self, generator: torch.Generator, strength: Tensor | None) -> Any:
        """The stage's random choices for a batch (any structure of tensors)."""

    def apply(self, images: Tensor, draws: Any, strength: Tensor | None) -> Tensor:
        """Float images in [0, 1] -> float images in [0, 1], from the draws alone."""

    def prefers_eager(self, device: torch.device) -> bool:
        """Whether the stage runs faster eagerly than inside the compiled view pipeline on ``device``."""


def _check_positive_range(name: str, pair: tuple[float, ...], high: float) -> None:
    """Raise unless pair is (min, max) with 0 < min <= max <= high."""
    if len(pair) != 2 or not 0 < pair[0] <= pair[1] <= high:
        raise FastltError(f"views.{name}: must be (min, max) with 0 < min <= max <= {high}, got {pair}")


def _check_probability(name: str, value: float) -> None:
    """Raise unless value is a probability."""
    if not 0.0 <= value <= 1.0:
        raise FastltError(f"views.{name}: must be a probability in [0, 1], got {value}")


def _meaning(default: Any, meaning: str) -> Any:
    """A field with its one-line meaning, which ``fastlt recipe show`` prints."""
    return field(default=default, metadata={"meaning": meaning})


@dataclass(frozen=True)
class ViewConfig:
    """Settings of one SimCLR view pipeline; defaults are the CIFAR views of docs/simclr.md.

    jitter = (brightness, contrast, saturation, hue) strengths as in torchvision's ColorJitter:
    factors U[max(0, 1 - s), 1 + s] for the first three, hue shift U[-h, h].
    """

    size: int = _meaning(32, "side of the square view in pixels")
    scale: tuple[float, float] = _meaning((0.1, 1.0), "random resized crop: range of the area fraction")
    ratio: tuple[float, float] = _meaning((3 / 4, 4 / 3), "random resized crop: range of the aspect ratio")
    interpolation: str = _meaning("bicubic", "resize filter: bicubic or bilinear (antialiased, as torchvision)")
    flip_p: float = _meaning(0.5, "probability of a horizontal flip")
    jitter: tuple[float, float, float, float] = _meaning(
        (0.4, 0.4, 0.4, 0.1), "colour jitter strengths: brightness, contrast, saturation, hue")
    jitter_p: float = _meaning(0.8, "probability of the colour jitter")
    grayscale_p: float = _meaning(0.2, "probability of turning the view grey")
    blur_p: float = _meaning(0.0, "probability of a Gaussian blur (0.5 for ImageNet views)")
    blur_sigma: tuple[float, float] = _meaning((0.1, 2.0), "range of the blur's sigma in pixels")

    def __post_init__(self) -> None:
        for name in SEQUENCE_FIELDS:  # recipes give lists; keep the config hashable
            try:
                object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
            except (TypeError, ValueError):
                raise FastltError(f"views.{name}: must be a list of numbers, got {getattr(self, name)!r}") from None
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 2:
            raise FastltError(f"views.size: must be an integer >= 2, got {self.size!r}")
        _check_positive_range("scale", self.scale, 1.0)
        _check_positive_range("ratio", self.ratio, math.inf)
        if self.interpolation not in F.FILTER_RADIUS:
            choices = sorted(F.FILTER_RADIUS)
            raise FastltError(f"views.interpolation: must be one of {choices}, got {self.interpolation!r}")
        if len(self.jitter) != JITTER_OPS or min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise FastltError(
                f"views.jitter: must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5, got {self.jitter}"
            )
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            _check_probability(name, getattr(self, name))
        _check_positive_range("blur_sigma", self.blur_sigma, math.inf)

    @classmethod
    def cifar(cls) -> ViewConfig:
        """SimCLR CIFAR views: 32 px, scale (0.1, 1), no blur."""
        return cls()

    @classmethod
    def imagenet(cls) -> ViewConfig:
        """SimCLR ImageNet views: 224 px, scale (0.08, 1), bicubic (RandomResizedCrop(224, interpolation=3) in
        SDCLR's and TS's train_simCLR.py), Gaussian blur with p = 0.5."""
        return cls(size=224, scale=(0.08, 1.0), interpolation="bicubic", blur_p=0.5)

    @property
    def blur_kernel_size(self) -> int:
        """About 10 % of the view size, made odd (23 at 224 px, as in SimCLR), at least 3."""
        size = max(3, int(0.1 * self.size))
        return size if size % 2 == 1 else size + 1

    def jitter_bounds(self) -> tuple[tuple[float, float], ...]:
        """(low, high) of the brightness, contrast, saturation factors and of the hue shift."""
        brightness, contrast, saturation, hue = self.jitter
        return tuple((max(0.0, 1 - s), 1 + s) for s in (brightness, contrast, saturation)) + ((-hue, hue),)


def sample_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """[n, 4] int64 (top, left, height, width) boxes drawn as torchvision's RandomResizedCrop does.

    Each sample draws all 10 attempts (area fraction U[scale], log aspect U[log ratio]) at
    once; the first attempt that fits the image wins and its position is uniform; a sample
    with no fitting attempt gets the centred fallback box (aspect clamped to ``ratio``).
    """
    device = generator.device
    area = height * width
    area_fraction = torch.empty(n, CROP_ATTEMPTS, device=device).uniform_(scale[0], scale[1], generator=generator)
    log_aspect = torch.empty(n, CROP_ATTEMPTS, device=device).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    target_area = area * area_fraction
    aspect = log_aspect.exp()
    box_w = torch.sqrt(target_area * aspect).round()
    box_h = torch.sqrt(target_area / aspect).round()
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first_fit = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # 0 when none fits (masked below)
    found = fits.any(dim=1)
    box_h = box_h.gather(1, first_fit).squeeze(1)
    box_w = box_w.gather(1, first_fit).squeeze(1)
    position = torch.rand(n, 2, device=device, generator=generator)
    top = (position[:, 0] * (height - box_h + 1)).floor()
    left = (position[:, 1] * (width - box_w + 1)).floor()

    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = round(height * max(ratio)), height
    else:
        fallback_w, fallback_h = width, height
    fallback = ((height - fallback_h) // 2, (width - fallback_w) // 2, fallback_h, fallback_w)
    drawn = (top, left, box_h, box_w)
    return torch.stack([torch.where(found, d, f) for d, f in zip(drawn, fallback)], dim=1).to(torch.int64)


@dataclass(frozen=True)
class ViewParams:
    """Every random choice of one view of a batch, one row per sample (all on the device)."""

    boxes: Tensor  # [B, 4] int64 crop (top, left, height, width)
    flip: Tensor  # [B] bool, mirror horizontally
    jitter: Tensor  # [B] bool, apply colour jitter
    jitter_factors: Tensor  # [B, 4] brightness, contrast, saturation factors, hue shift (drawn for all)
    jitter_order: Tensor  # [B, 4] int64 permutation of the four jitter ops (0..3 as in jitter_factors)
    grayscale: Tensor  # [B] bool
    blur: Tensor  # [B] bool
    blur_sigma: Tensor  # [B] Gaussian sigma (drawn for all)
    extra: Any = None  # the extra stage's draws, None without one


class SimCLRViews:
    """One random view per image: crop+flip -> jitter -> grayscale -> extra -> blur.

    ``extra`` is an optional stage on float images in [0, 1] (BCL's boosted RandAugment);
    strength is passed to it untouched. ``many`` makes the views of a batch.
    """

    def __init__(self, config: ViewConfig, extra: ExtraStage | None = None):
        self.config = config
        self.extra = extra
        self._apply = self.apply

    def enable_compile(self) -> None:
        """Run ``apply`` under torch.compile: static graphs, one per batch shape (full and last batch),
        in which the compiler fuses the elementwise ops; the draws stay eager.

        An extra stage that ``prefers_eager`` on the batch's device (BCL's RandAugment on a CPU,
        where its grouped eager form beat the compiled masked one 2.7x in ``fastlt bench views``)
        runs between two compiled graphs instead of inside one.
        """
        quiet_cuda_home_probe()
        compile = functools.partial(torch.compile, dynamic=False)
        self._compiled_whole = compile(self.apply)
        self._compiled_before, self._compiled_after = compile(self._before_extra), compile(self._after_extra)
        self._apply = self._apply_compiled

    def __call__(self, images: Tensor, generator: torch.Generator, strength: Tensor | None = None) -> Tensor:
        """uint8 [B, 3, H, W] (any memory format) -> float32 [B, 3, size, size] in [0, 1], channels_last."""
        return self.many(images, generator, 1, strength)[0]

    def many(self, images: Tensor, generator: torch.Generator, count: int,
             strength: Tensor | None = None) -> tuple[Tensor, ...]:
        """``count`` independent views of the same uint8 batch, converted to float once for all of them.

        Each view draws its parameters and then applies them, so the random stream is the one
        ``count`` calls would consume.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise FastltError(
                f"views: expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        pixels = F.to_float(images)
        batch, _, height, width = images.shape
        return tuple(self._apply(pixels, self.sample(batch, height, width, generator, strength), strength)
                     for _ in range(count))

    def sample(self, n: int, height: int, width: int, generator: torch.Generator,
               strength: Tensor | None = None) -> ViewParams:
        """Draw every random choice of a view of n images of height x width, per sample, the extra
        stage's last."""
        config = self.config
        device = generator.device
        boxes = sample_resized_crop_boxes(n, height, width, config.scale, config.ratio, generator)
        flip = torch.rand(n, device=device, generator=generator) < config.flip_p
        jitter = torch.rand(n, device=device, generator=generator) < config.jitter_p
        unit = torch.rand(n, JITTER_OPS, device=device, generator=generator)
        jitter_factors = torch.stack(
            [low + unit[:, op] * (high - low) for op, (low, high) in enumerate(config.jitter_bounds())], dim=1
        )
        jitter_order = torch.rand(n, JITTER_OPS, device=device, generator=generator).argsort(dim=1)
        grayscale = torch.rand(n, device=device, generator=generator) < config.grayscale_p
        blur = torch.rand(n, device=device, generator=generator) < config.blur_p
        low, high = config.blur_sigma
        blur_sigma = torch.empty(n, device=device).uniform_(low, high, generator=generator)
        extra = self.extra.draw(generator, strength) if self.extra is not None else None
        return ViewParams(boxes, flip, jitter, jitter_factors, jitter_order, grayscale, blur, blur_sigma, extra)

    def apply(self, images: Tensor, params: ViewParams, strength: Tensor | None = None) -> Tensor:
        """Apply drawn parameters to float images in [0, 1]; draws nothing."""
        views = self._before_extra(images, params)
        if self.extra is not None:
            views = self.extra.apply(views, params.extra, strength)
        return self._after_extra(views, params)

    def _before_extra(self, images: Tensor, params: ViewParams) -> Tensor:
        """Crop, flip, jitter, grayscale. Bicubic resampling can overshoot [0, 1]; the crop is
        clamped before the colour ops, as torchvision's uint8 path would."""
        config = self.config
        size = (config.size, config.size)
        views = F.resized_crop(images, params.boxes, size, params.flip, config.interpolation).clamp_(0.0, 1.0)
        if config.jitter_p > 0:
            views = self._jitter(views, params)
        if config.grayscale_p > 0:
            views = torch.where(params.grayscale[:, None, None, None], F.rgb_to_grayscale(views, 1), views)
        return views

    def _after_extra(self, views: Tensor, params: ViewParams) -> Tensor:
        """Blur, and the channels_last layout the model takes."""
        config = self.config
        if config.blur_p > 0:
            blurred = F.gaussian_blur(views, params.blur_sigma, config.blur_kernel_size)
            views = torch.where(params.blur[:, None, None, None], blurred, views)
        return views.contiguous(memory_format=torch.channels_last)

    def _apply_compiled(self, images: Tensor, params: ViewParams, strength: Tensor | None) -> Tensor:
        """``apply`` through the compiled graphs: one for the whole pipeline, or, where the extra stage
        runs faster eagerly on this device, one on either side of it."""
        if self.extra is None or not self.extra.prefers_eager(images.device):
            return self._compiled_whole(images, params, strength)
        views = self.extra.apply(self._compiled_before(images, params), params.extra, strength)
        return self._compiled_after(views, params)

    @staticmethod
    def _jitter(images: Tensor, params: ViewParams) -> Tensor:
        """The four colour ops in each sample's own order, for the samples drawn to be jittered.

        Brightness, contrast and saturation are blends (``adjust_colour`` picks one per
        sample), so each slot of the order is one batched blend; the hue shift, the costly
        op, runs once, between the blends of the slots before and after each sample's hue
        slot. Samples outside a slot's stage get the identity factor 1 (hue shift 0).
        Cost: six blends and one hue shift instead of three and one for a fixed order.
        """
        order = params.jitter_order
        hue_slot = (order == HUE_OP).to(torch.uint8).argmax(dim=1)
        slot_factors = params.jitter_factors.gather(1, order)  # factor of the op in each slot

        def blend_slot(images: Tensor, slot: int, active: Tensor) -> Tensor:
            active = active & params.jitter
            ops = torch.where(active, order[:, slot], F.BRIGHTNESS)
            return F.adjust_colour(images, ops, torch.where(active, slot_factors[:, slot], 1.0))

        for slot in range(JITTER_OPS - 1):  # the last slot can never precede the hue shift
            images = blend_slot(images, slot, slot < hue_slot)
        images = F.adjust_hue(images, torch.where(params.jitter, params.jitter_factors[:, HUE_OP], 0.0))
        for slot in range(1, JITTER_OPS):  # the first slot can never follow it
            images = blend_slot(images, slot, slot > hue_slot)
        return images
