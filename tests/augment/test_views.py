"""The SimCLR view pipeline: config checks, sampled distributions vs torchvision, and the
composition of ops vs torchvision applied image by image with the same parameters."""
import dataclasses
import math

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from scipy import stats

from fastlt.augment import functional as F
from fastlt.augment.views import SimCLRViews, ViewConfig, sample_resized_crop_boxes
from fastlt.errors import FastltError

KS_MIN_P = 1e-3  # seeds are fixed, so this never flakes; a real mismatch gives p ~ 1e-10 or less
SIGMAS = 4  # apply rates must be within 4 binomial standard deviations
PIXEL_TOLERANCE = 1e-4  # float32 reordering noise is ~1e-6; the requirement is 1/255


def uint8_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=g)


def assert_rate(mask: torch.Tensor, p: float) -> None:
    n = mask.numel()
    assert abs(mask.float().mean().item() - p) <= SIGMAS * math.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------- config


def test_presets_follow_the_reference_views():
    cifar = ViewConfig.cifar()
    assert cifar == ViewConfig()
    assert (cifar.size, cifar.scale, cifar.interpolation, cifar.flip_p) == (32, (0.1, 1.0), "bicubic", 0.5)
    assert (cifar.jitter, cifar.jitter_p, cifar.grayscale_p, cifar.blur_p) == ((0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.0)
    imagenet = ViewConfig.imagenet()
    assert (imagenet.size, imagenet.scale, imagenet.blur_p, imagenet.blur_sigma) == (224, (0.08, 1.0), 0.5, (0.1, 2.0))
    assert imagenet.interpolation == "bicubic"
    assert imagenet.blur_kernel_size == 23  # 10 % of 224, made odd, as SimCLR
    assert cifar.blur_kernel_size == 3


def test_recipe_lists_become_tuples():
    config = ViewConfig(scale=[0.2, 1.0], jitter=[0.1, 0.2, 0.3, 0.05])
    assert config.scale == (0.2, 1.0) and config.jitter == (0.1, 0.2, 0.3, 0.05)
    hash(config)


@pytest.mark.parametrize(
    "field, value",
    [
        ("size", 1),
        ("size", 32.0),
        ("scale", (0.0, 1.0)),
        ("scale", (0.5, 0.2)),
        ("scale", (0.5, 1.5)),
        ("scale", 0.5),
        ("scale", ("a", 1.0)),
        ("ratio", (0.0, 1.0)),
        ("ratio", (2.0, 1.0)),
        ("interpolation", "nearest"),
        ("flip_p", 1.5),
        ("jitter", (0.4, 0.4, 0.4)),
        ("jitter", (0.4, -0.1, 0.4, 0.1)),
        ("jitter", (0.4, 0.4, 0.4, 0.6)),
        ("jitter_p", -0.1),
        ("grayscale_p", 2.0),
        ("blur_p", 1.01),
        ("blur_sigma", (0.0, 2.0)),
        ("blur_sigma", (2.0, 0.1)),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(FastltError, match=f"^views.{field}: "):
        ViewConfig(**{field: value})


# ---------------------------------------------------------------- crop sampling


def torchvision_boxes(n: int, height: int, width: int, scale, ratio, seed: int) -> torch.Tensor:
    """n boxes from torchvision's own RandomResizedCrop.get_params (global RNG, restored afterwards)."""
    image = torch.zeros(3, height, width)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.tensor([T.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)])


def box_statistics(boxes: torch.Tensor, height: int, width: int) -> dict[str, torch.Tensor]:
    top, left, box_h, box_w = boxes.double().unbind(dim=1)
    return {
        "area fraction": box_h * box_w / (height * width),
        "log aspect": torch.log(box_w / box_h),
        "centre y": (top + box_h / 2) / height,
        "centre x": (left + box_w / 2) / width,
    }


@pytest.mark.parametrize(
    "height, width, scale, ratio",
    [
        (32, 32, (0.1, 1.0), (3 / 4, 4 / 3)),  # CIFAR views
        (48, 40, (0.08, 1.0), (3 / 4, 4 / 3)),  # ImageNet scale on a non-square image
        (20, 64, (0.5, 1.0), (3 / 4, 4 / 3)),  # wide image: most samples take the fallback box
    ],
)
def test_crop_boxes_match_torchvision_distribution(height, width, scale, ratio):
    n = 3000
    ours = sample_resized_crop_boxes(n, height, width, scale, ratio, torch.Generator().manual_seed(1))
    theirs = torchvision_boxes(n, height, width, scale, ratio, seed=2)
    assert ours.shape == (n, 4) and ours.dtype == torch.int64
    top, left, box_h, box_w = ours.unbind(dim=1)
    assert (top >= 0).all() and (left >= 0).all() and (box_h >= 1).all() and (box_w >= 1).all()
    assert (top + box_h <= height).all() and (left + box_w <= width).all()
    ours_stats, their_stats = box_statistics(ours, height, width), box_statistics(theirs, height, width)
    for name in ours_stats:
        result = stats.ks_2samp(ours_stats[name].numpy(), their_stats[name].numpy())
        assert result.pvalue > KS_MIN_P, f"{name}: KS p = {result.pvalue:.2e}"


@pytest.mark.parametrize("height, width", [(32, 32), (20, 64), (64, 20)])
@pytest.mark.parametrize("ratio", [(2.0, 3.0), (0.2, 0.3)])
def test_crop_fallback_box_equals_torchvision(height, width, ratio):
    # The whole area at an aspect ratio far from the image's never fits, so every sample takes
    # the centred fallback box, which is deterministic: compare it exactly.
    ours = sample_resized_crop_boxes(5, height, width, (1.0, 1.0), ratio, torch.Generator().manual_seed(0))
    theirs = torchvision_boxes(1, height, width, (1.0, 1.0), ratio, seed=0)
    assert torch.equal(ours, theirs.expand(5, 4))


# ---------------------------------------------------------------- per-sample draws


def test_apply_rates_factor_ranges_and_independence():
    config = ViewConfig.imagenet()
    n = 20000
    params = SimCLRViews(config).sample(n, 64, 64, torch.Generator().manual_seed(3))
    assert_rate(params.flip, config.flip_p)
    assert_rate(params.jitter, config.jitter_p)
    assert_rate(params.grayscale, config.grayscale_p)
    assert_rate(params.blur, config.blur_p)
    # Draws are independent across choices, not one shared uniform per sample.
    assert_rate(params.flip & params.grayscale, config.flip_p * config.grayscale_p)
    assert_rate(params.jitter & params.blur, config.jitter_p * config.blur_p)
    assert_rate(params.flip & params.blur, config.flip_p * config.blur_p)

    bounds = [(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)]  # ColorJitter(0.4, 0.4, 0.4, 0.1)
    for op, (low, high) in enumerate(bounds):
        factors = params.jitter_factors[:, op].double()
        assert factors.min() >= low and factors.max() <= high
        assert stats.kstest(factors.numpy(), "uniform", args=(low, high - low)).pvalue > KS_MIN_P
    sigma = params.blur_sigma.double()
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0
    assert stats.kstest(sigma.numpy(), "uniform", args=(0.1, 1.9)).pvalue > KS_MIN_P

    order = params.jitter_order
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(n, 4))  # each row a permutation
    codes = (order * torch.tensor([64, 16, 4, 1])).sum(dim=1)
    counts = torch.bincount(codes, minlength=256)[codes.unique()]
    assert len(counts) == 24  # all 4! orders occur, uniformly
    assert stats.chisquare(counts.numpy()).pvalue > KS_MIN_P


# ---------------------------------------------------------------- the pipeline vs torchvision


def torchvision_view(image_uint8: torch.Tensor, params, b: int, config: ViewConfig) -> torch.Tensor:
    """One view made by torchvision's functional ops with sample b's parameters, in the pipeline order."""
    image = TF.to_dtype(image_uint8, torch.float32, scale=True)
    mode = TF.InterpolationMode(config.interpolation)
    image = TF.resized_crop(image, *params.boxes[b].tolist(), [config.size, config.size], mode, antialias=True)
    if params.flip[b]:
        image = TF.hflip(image)
    image = image.clamp(0, 1)  # what the uint8 path of torchvision's RandomResizedCrop does
    if params.jitter[b]:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for op in params.jitter_order[b].tolist():
            image = ops[op](image, params.jitter_factors[b, op].item())
    if params.grayscale[b]:
        image = TF.rgb_to_grayscale(image, 3)
    if params.blur[b]:
        k = config.blur_kernel_size
        image = TF.gaussian_blur(image, [k, k], [params.blur_sigma[b].item()] * 2)
    return image


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_pipeline_equals_torchvision_ops_with_the_same_parameters(interpolation):
    config = ViewConfig(size=24, blur_p=0.5, interpolation=interpolation)
    views = SimCLRViews(config)
    batch = 8
    images = uint8_images(batch, 40, 36, seed=4).contiguous(memory_format=torch.channels_last)
    params = views.sample(batch, 40, 36, torch.Generator().manual_seed(5))
    # Every branch taken and skipped somewhere in the batch, whatever the draws.
    pattern = torch.tensor([True, False, True, True, False, True, False, True])
    params = dataclasses.replace(params, jitter=pattern, grayscale=pattern.roll(1), blur=pattern.roll(2))
    assert len({tuple(row) for row in params.jitter_order.tolist()}) > 1  # orders differ per sample
    out = views.apply(F.to_float(images), params)
    for b in range(batch):
        assert (out[b] - torchvision_view(images[b], params, b, config)).abs().max() <= PIXEL_TOLERANCE


def test_call_is_sample_then_apply():
    views = SimCLRViews(ViewConfig(size=16, blur_p=0.5))
    images = uint8_images(4, 20, 20, seed=6)
    out = views(images, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    params = views.sample(4, 20, 20, generator)
    assert torch.equal(out, views.apply(F.to_float(images), params))


class RandomDimming:
    """An extra stage that draws from the generator, as BCL's RandAugment does."""

    def draw(self, generator, strength):
        return torch.rand(4, 1, 1, 1, generator=generator)

    def apply(self, images, draws, strength):
        return images * draws


def test_many_views_convert_once_and_equal_separate_calls(monkeypatch):
    views = SimCLRViews(ViewConfig(size=16, blur_p=0.5), extra=RandomDimming())
    images = uint8_images(4, 20, 20, seed=8)
    generator = torch.Generator().manual_seed(9)
    separate = [views(images, generator) for _ in range(3)]
    together = views.many(images, torch.Generator().manual_seed(9), 3)
    assert len(together) == 3 and all(torch.equal(a, b) for a, b in zip(separate, together))
    assert not torch.equal(together[0], together[1])
    conversions = []
    original = F.to_float
    monkeypatch.setattr(F, "to_float", lambda x: conversions.append(1) or original(x))
    views.many(images, generator, 2)
    assert conversions == [1]


def test_extra_stage_runs_after_grayscale_and_before_blur():
    calls = []
    strength = torch.tensor([0.1, 0.9, 0.5])

    class Invert:
        def draw(self, generator, given_strength):
            calls.append(("draw", generator, given_strength))
            return "drawn"

        def apply(self, images, draws, given_strength):
            calls.append(("apply", images.clone(), draws, given_strength))
            return 1 - images

    config = ViewConfig(size=12, jitter_p=0.0, grayscale_p=1.0, blur_p=1.0)
    views = SimCLRViews(config, extra=Invert())
    generator = torch.Generator().manual_seed(8)
    out = views(uint8_images(3, 16, 16, seed=9), generator, strength)
    (_, given_generator, drawn_strength), (_, seen, draws, given_strength) = calls
    assert given_generator is generator and drawn_strength is strength and given_strength is strength
    assert draws == "drawn"  # apply gets what draw returned
    assert seen.shape == (3, 3, 12, 12) and seen.min() >= 0 and seen.max() <= 1
    assert torch.equal(seen[:, 0], seen[:, 1]) and torch.equal(seen[:, 1], seen[:, 2])  # grey before extra
    sigmas = views.sample(3, 16, 16, torch.Generator().manual_seed(8)).blur_sigma  # the same draws
    for b in range(3):
        expected = TF.gaussian_blur(1 - seen[b], [3, 3], [sigmas[b].item()] * 2)  # blur after extra
        assert (out[b] - expected).abs().max() <= PIXEL_TOLERANCE


# ---------------------------------------------------------------- determinism and output format


def test_same_seed_same_views_other_seed_other_views():
    views = SimCLRViews(ViewConfig.cifar())
    images = uint8_images(16, 32, 32, seed=10)
    first = views(images, torch.Generator().manual_seed(11))
    assert torch.equal(first, views(images, torch.Generator().manual_seed(11)))
    assert not torch.equal(first, views(images, torch.Generator().manual_seed(12)))
    generator = torch.Generator().manual_seed(11)
    view1, view2 = views(images, generator), views(images, generator)
    assert torch.equal(view1, first) and not torch.equal(view1, view2)  # the two views of SimCLR differ


@pytest.mark.parametrize("config, height, width", [(ViewConfig.cifar(), 32, 32), (ViewConfig.imagenet(), 72, 64)])
def test_output_shape_dtype_range_and_memory_format(config, height, width):
    images = uint8_images(3, height, width, seed=13)
    views = SimCLRViews(config)
    out = views(images, torch.Generator().manual_seed(14))
    assert out.shape == (3, 3, config.size, config.size) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= 0 and out.max() <= 1
    channels_last = views(images.contiguous(memory_format=torch.channels_last), torch.Generator().manual_seed(14))
    assert (channels_last - out).abs().max() <= 1e-6


@pytest.mark.parametrize(
    "images",
    [torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8)],
)
def test_rejects_images_that_are_not_uint8_rgb_batches(images):
    with pytest.raises(FastltError, match="^views: "):
        SimCLRViews(ViewConfig())(images, torch.Generator())
