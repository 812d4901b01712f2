"""Each batched op against torchvision.transforms.v2.functional applied image by image.

The requirement is agreement within 1/255 on a 0-255 scale. The ops compute the same
maths as torchvision in float32, only in a different summation order (matrix products
instead of interpolate/conv), so the true gap is ~1e-6; we assert TOLERANCE = 1e-4,
far below 1/255 and far above float32 rounding, so a wrong tap, kernel or edge rule
(errors of 1e-2 and more) fails while reordering noise passes.
"""
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fastlt.augment import functional as F

TOLERANCE = 1e-4
assert TOLERANCE < 1 / 255


def random_images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Random RGB images with the awkward pixels of colour maths: grey, black, white, tied maxima."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, height, width, generator=g)
    images[0, :, :3] = 0.5  # grey rows: zero chroma
    images[0, :, 3:5] = 0.0  # black: zero value
    images[1, :, :2] = 1.0  # white
    images[1, 1, 2:6] = images[1, 0, 2:6]  # red == green: tie for the maximum channel
    images[-1, :, :, :2] = images[-1, :, :, :2].round()  # saturated primaries / secondaries
    return images


def max_error(ours: torch.Tensor, reference_per_image) -> float:
    return max((ours[b] - reference_per_image(b)).abs().max().item() for b in range(ours.shape[0]))


def test_to_float_scales_uint8_and_keeps_channels_last():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8, generator=g)
    images = images.contiguous(memory_format=torch.channels_last)
    out = F.to_float(images)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    expected = TF.to_dtype(images, torch.float32, scale=True)
    assert (out - expected).abs().max() <= 1e-7  # k / 255 vs k * (1 / 255): one float32 ulp
    assert out.min() >= 0 and out.max() <= 1


# (top, left, height, width) on a 40 x 36 image: full image, interior, touching the bottom-right
# and left borders, one-pixel-wide-ish strips, and windows both smaller (upsampling) and larger
# (antialiased downsampling) than the outputs below.
BOXES = torch.tensor(
    [[0, 0, 40, 36], [5, 3, 10, 12], [30, 20, 10, 16], [0, 10, 40, 7], [12, 0, 28, 36], [3, 4, 33, 30], [39, 35, 1, 1]]
)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("size", [(32, 32), (16, 20), (40, 36)])
def test_resized_crop_matches_torchvision(interpolation, antialias, size):
    images = random_images(len(BOXES), 40, 36, seed=1)
    flip = torch.tensor([True, False, True, False, True, True, False])
    out = F.resized_crop(images, BOXES, size, flip, interpolation, antialias)
    assert out.shape == (len(BOXES), 3, *size)

    def reference(b: int) -> torch.Tensor:
        top, left, height, width = BOXES[b].tolist()
        mode = TF.InterpolationMode(interpolation)
        crop = TF.resized_crop(images[b], top, left, height, width, list(size), mode, antialias=antialias)
        return TF.hflip(crop) if flip[b] else crop

    assert max_error(out, reference) <= TOLERANCE


def test_resized_crop_with_random_boxes_and_float_box_dtype():
    g = torch.Generator().manual_seed(2)
    batch, height, width = 6, 48, 40
    images = random_images(batch, height, width, seed=3)
    box_h = torch.randint(1, height + 1, (batch,), generator=g)
    box_w = torch.randint(1, width + 1, (batch,), generator=g)
    top = (torch.rand(batch, generator=g) * (height - box_h + 1)).floor().long()
    left = (torch.rand(batch, generator=g) * (width - box_w + 1)).floor().long()
    boxes = torch.stack([top, left, box_h, box_w], dim=1)
    flip = torch.rand(batch, generator=g) < 0.5
    out = F.resized_crop(images, boxes.float(), (24, 24), flip)  # bicubic, antialias: the view default
    mode = TF.InterpolationMode.BICUBIC

    def reference(b: int) -> torch.Tensor:
        crop = TF.resized_crop(images[b], *boxes[b].tolist(), [24, 24], mode, antialias=True)
        return TF.hflip(crop) if flip[b] else crop

    assert max_error(out, reference) <= TOLERANCE
    assert torch.equal(F.resized_crop(images, boxes, (24, 24), flip), out)


def test_resized_crop_without_flip_argument_equals_no_flip():
    images = random_images(len(BOXES), 40, 36, seed=4)
    no_flip = torch.zeros(len(BOXES), dtype=torch.bool)
    assert torch.equal(F.resized_crop(images, BOXES, (8, 8)), F.resized_crop(images, BOXES, (8, 8), no_flip))


def test_resized_crop_rejects_unknown_interpolation():
    with pytest.raises(ValueError, match="interpolation"):
        F.resized_crop(torch.rand(1, 3, 4, 4), torch.tensor([[0, 0, 4, 4]]), (2, 2), interpolation="nearest")


@pytest.mark.parametrize(
    "ours, theirs, low, high",
    [
        (F.adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
        (F.adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
        (F.adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
        (F.adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
    ids=["brightness", "contrast", "saturation", "hue"],
)
def test_colour_ops_match_torchvision(ours, theirs, low, high):
    images = random_images(8, 12, 10, seed=5)
    g = torch.Generator().manual_seed(6)
    factors = low + (high - low) * torch.rand(8, generator=g)
    factors[0], factors[1] = low, high  # the range ends (hue +-0.5, black / grey images)
    out = ours(images, factors)
    assert max_error(out, lambda b: theirs(images[b], factors[b].item())) <= TOLERANCE


def test_adjust_colour_picks_the_op_per_sample():
    images = random_images(9, 8, 8, seed=7)
    ops = torch.tensor([0, 1, 2] * 3)
    factors = torch.linspace(0.0, 2.0, 9)
    reference_ops = {
        F.BRIGHTNESS: TF.adjust_brightness,
        F.CONTRAST: TF.adjust_contrast,
        F.SATURATION: TF.adjust_saturation,
    }
    out = F.adjust_colour(images, ops, factors)
    assert max_error(out, lambda b: reference_ops[int(ops[b])](images[b], factors[b].item())) <= TOLERANCE


@pytest.mark.parametrize("channels", [1, 3])
def test_rgb_to_grayscale_matches_torchvision(channels):
    images = random_images(3, 6, 5, seed=8)
    out = F.rgb_to_grayscale(images, channels)
    assert out.shape == (3, channels, 6, 5)
    assert max_error(out, lambda b: TF.rgb_to_grayscale(images[b], channels)) <= TOLERANCE


@pytest.mark.parametrize("kernel_size, height, width", [(3, 12, 10), (5, 9, 16), (23, 30, 26)])
def test_gaussian_blur_matches_torchvision_per_sample_sigma(kernel_size, height, width):
    images = random_images(5, height, width, seed=9)
    g = torch.Generator().manual_seed(kernel_size)
    sigmas = 0.1 + 1.9 * torch.rand(5, generator=g)  # SimCLR's ImageNet range U[0.1, 2]
    sigmas[0], sigmas[1] = 0.1, 2.0
    out = F.gaussian_blur(images, sigmas, kernel_size)

    def reference(b: int) -> torch.Tensor:
        return TF.gaussian_blur(images[b], [kernel_size, kernel_size], [sigmas[b].item()] * 2)

    assert max_error(out, reference) <= TOLERANCE


@pytest.mark.parametrize("kernel_size", [4, -1, 25])  # even, negative, radius 12 >= 12 px
def test_gaussian_blur_rejects_bad_kernel_size(kernel_size):
    with pytest.raises(ValueError, match="kernel_size"):
        F.gaussian_blur(torch.rand(1, 3, 12, 12), torch.ones(1), kernel_size)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_padded_crop_is_torchvision_pad_crop_then_flip_per_image(dtype):
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (6, 3, 7, 9), generator=generator).to(dtype)
    offsets = torch.randint(0, 9, (6, 2), generator=generator)
    flips = torch.tensor([False, True, True, False, True, False])
    out = F.padded_crop(images, offsets, padding=4, flip=flips)
    for i in range(6):
        expected = TF.crop(TF.pad(images[i], [4], fill=0), int(offsets[i, 0]), int(offsets[i, 1]), 7, 9)
        expected = TF.horizontal_flip(expected) if flips[i] else expected
        assert out.dtype == dtype and torch.equal(out[i], expected), i
    assert torch.equal(F.padded_crop(images, torch.full((6, 2), 4), padding=4), images)  # centred: no change
