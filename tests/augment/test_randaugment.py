"""Batched BCL RandAugment against PIL (BCL's own calls) / torchvision / numpy, one image at a time."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageDraw, ImageOps
from torchvision.transforms import InterpolationMode

from fastlt.augment import randaugment
from fastlt.augment.randaugment import (
    FAMILIES,
    OPS,
    BoostedRandAugment,
    StageDraws,
    apply_op,
    augment_stage,
    bcl_d_magnitude,
    bcl_i_magnitude,
)
from fastlt.errors import FastltError

HEIGHT, WIDTH = 12, 16  # not square, so a mix-up of height and width shows
GREY = (125, 123, 114)
GREY_FLOAT = [v / 255 for v in GREY]

# The spec's op parameter at M = 0, 15, 30 (docs/bcl.md); translate and cutout
# as fractions of the image size.
SPEC_VALUES = {
    "shear_x": (0.0, 0.3, 0.6), "shear_y": (0.0, 0.3, 0.6),
    "translate_x": (0.0, 0.33, 0.66), "translate_y": (0.0, 0.33, 0.66),
    "rotate": (0.0, 30.0, 60.0),
    "solarize": (0.0, 55.0, 110.0),
    "posterize": (4.0, 6.0, 8.0),
    "contrast": (0.1, 1.0, 1.9), "color": (0.1, 1.0, 1.9),
    "brightness": (0.1, 1.0, 1.9), "sharpness": (0.1, 1.0, 1.9),
    "cutout": (0.0, 0.2, 0.4),
}
PARAMETER_FREE = ("auto_contrast", "invert", "equalize")


def random_images(seed: int, batch: int, quantised: bool) -> torch.Tensor:
    images = torch.rand(batch, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))
    return torch.round(images * 255) / 255 if quantised else images


def as_uint8(image: torch.Tensor) -> torch.Tensor:
    return torch.round(image * 255).to(torch.uint8)


def bcl_cutout_corners(fraction: float, centre: tuple[float, float]) -> tuple[float, ...] | None:
    """BCL's CutoutAbs box (x0, y0, x1, y1) for unit draws `centre` in [0, 1)^2; None where its Cutout returns early.

    BCL's np.random.uniform(w) is uniform(low=w, high=1.0), which numpy computes as low + (high - low) * u.
    """
    if fraction <= 0:
        return None
    v = fraction * WIDTH
    x0 = WIDTH + (1.0 - WIDTH) * centre[0]
    y0 = HEIGHT + (1.0 - HEIGHT) * centre[1]
    x0 = int(max(0, x0 - v / 2.0))
    y0 = int(max(0, y0 - v / 2.0))
    return x0, y0, min(WIDTH, x0 + v), min(HEIGHT, y0 + v)


def bcl_geometric(image: Image.Image, op: str, value: float, **fill) -> Image.Image:
    """BCL's PIL call (data/randaug.py) for a geometric op, ``value`` carrying the sign BCL drew."""
    if op == "shear_x":
        return image.transform(image.size, Image.AFFINE, (1, value, 0, 0, 1, 0), **fill)
    if op == "shear_y":
        return image.transform(image.size, Image.AFFINE, (1, 0, 0, value, 1, 0), **fill)
    if op == "translate_x":
        return image.transform(image.size, Image.AFFINE, (1, 0, value * image.size[0], 0, 1, 0), **fill)
    if op == "translate_y":
        return image.transform(image.size, Image.AFFINE, (1, 0, 0, 0, 1, value * image.size[1]), **fill)
    assert op == "rotate"
    return image.rotate(value, **fill)


def pil_source_pixels(op: str, value: float, height: int, width: int) -> np.ndarray:
    """[H, W] flat index of the input pixel BCL's PIL call puts at each output pixel; -1 where it fills.

    PIL moves the pixels of an int32 image ("I") by the same nearest-neighbour code as an RGB one,
    so an image of pixel numbers gives the map, for float images too.
    """
    numbers = Image.fromarray(np.arange(1, height * width + 1, dtype=np.int32).reshape(height, width))
    return np.array(bcl_geometric(numbers, op, value)).astype(np.int64) - 1


def reference(image: torch.Tensor, op: str, value: float, centre: tuple[float, float]) -> torch.Tensor:
    """One [3, H, W] image through BCL's PIL call (geometric ops, Cutout), torchvision (as its RandAugment
    calls it) or numpy.

    ``value`` is the op's parameter with its sign; ``centre`` the cutout centre in [0, 1)^2.
    """
    if op in OPS[:5]:
        source = torch.from_numpy(pil_source_pixels(op, value, *image.shape[-2:]))
        moved = image.flatten(1)[:, source.clamp(min=0)]
        return torch.where(source >= 0, moved, torch.zeros(()))
    if op == "auto_contrast":
        return TF.autocontrast(as_uint8(image)).float() / 255
    if op == "invert":
        return TF.invert(image)
    if op == "equalize":
        return TF.equalize(as_uint8(image)).float() / 255
    if op == "solarize":
        return TF.solarize(image, threshold=value / 255)
    if op == "posterize":
        return TF.posterize(as_uint8(image), bits=int(value)).float() / 255
    if op == "contrast":
        return TF.adjust_contrast(image, contrast_factor=value)
    if op == "color":
        return TF.adjust_saturation(image, saturation_factor=value)
    if op == "brightness":
        return TF.adjust_brightness(image, brightness_factor=value)
    if op == "sharpness":
        return TF.adjust_sharpness(image, sharpness_factor=value)
    assert op == "cutout"
    # PIL itself draws BCL's box (on a mask, so that continuous images keep their values).
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    corners = bcl_cutout_corners(value, centre)
    if corners is not None:
        ImageDraw.Draw(mask).rectangle(corners, fill=255)
    covered = torch.from_numpy(np.array(mask) > 0)
    return torch.where(covered, torch.tensor(GREY_FLOAT).view(3, 1, 1), image)


def signed_value(op: str, magnitude: float, sign: float) -> float:
    """BCL's linear map (M / 30) * (max - min) + min in Python floats, signed for the geometric ops."""
    low, _, high = SPEC_VALUES.get(op, (0.0, 0.0, 0.0))
    value = (magnitude / 30) * (high - low) + low
    return value * sign if op in OPS[:5] else value


def assert_matches_reference(op: str, images: torch.Tensor, magnitudes: torch.Tensor, signs: torch.Tensor,
                             seed: int) -> None:
    out = apply_op(images, op, magnitudes, signs, torch.Generator().manual_seed(seed))
    centres = torch.rand(images.shape[0], 2, generator=torch.Generator().manual_seed(seed))
    assert out.shape == images.shape and out.dtype == images.dtype
    for b in range(images.shape[0]):
        value = signed_value(op, float(magnitudes[b]), float(signs[b]))
        expected = reference(images[b], op, value, (float(centres[b, 0]), float(centres[b, 1])))
        got = out[b]
        if op == "auto_contrast":
            # PIL and torchvision compute (q - lo) / ((hi - lo) / 255) in floating point and truncate,
            # so where the exact quotient is a whole number they can land 1e-6 below it and lose a
            # level; fastlt's floor is exact. Allow one level there and nowhere else.
            levels = as_uint8(images[b]).float()
            low = levels.amin(dim=(-2, -1), keepdim=True)
            span = levels.amax(dim=(-2, -1), keepdim=True) - low
            whole = torch.remainder((levels - low) * 255, span.clamp(min=1)) == 0
            difference = (got - expected) * 255
            assert torch.all((difference.abs() < 1e-3) | (whole & (difference - 1).abs().lt(1e-3)))
        elif op == "solarize" and not torch.equal(images[b], torch.round(images[b] * 255) / 255):
            # The threshold is compared on round(x * 255) (uint8 semantics), torchvision's float op
            # compares x * 255 itself: they may disagree only within half a level of the threshold.
            near_threshold = ((images[b] * 255 - value).abs() <= 0.5)
            assert torch.all(((got - expected).abs() < 1e-6) | near_threshold)
        elif op in OPS[:5]:
            assert torch.equal(got, expected), (op, b)  # PIL's nearest pixels, bit for bit
        else:
            # Same formulas in float32, possibly in another order: 1e-5 covers the rounding.
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("quantised", [True, False], ids=["uint8-grid", "continuous"])
@pytest.mark.parametrize("op", OPS)
def test_each_op_matches_reference_at_random_magnitudes(op: str, quantised: bool) -> None:
    batch = 12
    images = random_images(OPS.index(op), batch, quantised)
    generator = torch.Generator().manual_seed(100 + OPS.index(op))
    magnitudes = torch.rand(batch, generator=generator) * 30
    signs = (torch.randint(2, (batch,), generator=generator) * 2 - 1).float()
    assert_matches_reference(op, images, magnitudes, signs, seed=7)


@pytest.mark.parametrize("level", [0, 1, 2], ids=["M=0", "M=15", "M=30"])
@pytest.mark.parametrize("op", [op for op in OPS if op not in PARAMETER_FREE])
def test_magnitude_maps_to_spec_value(op: str, level: int) -> None:
    batch = 4
    images = random_images(50 + level, batch, quantised=True)
    magnitudes = torch.full((batch,), 15.0 * level)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = apply_op(images, op, magnitudes, signs, torch.Generator().manual_seed(3))
    centres = torch.rand(batch, 2, generator=torch.Generator().manual_seed(3))
    for b in range(batch):
        value = SPEC_VALUES[op][level] * (float(signs[b]) if op in OPS[:5] else 1.0)
        expected = reference(images[b], op, value, (float(centres[b, 0]), float(centres[b, 1])))
        # Shear 0.6 moves some rows (columns) by exactly k + 1/2 pixels: PIL's fixed point settles
        # those ties, and fastlt settles them the same way.
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=0, msg=lambda m: f"{op} {value}: {m}")


def test_bcl_magnitude_mappings() -> None:
    weights = torch.tensor([0.0, 0.5, 1.0, 1.0])
    uniform = torch.tensor([0.3, 0.5, 1.0, 0.2])
    torch.testing.assert_close(bcl_i_magnitude(weights), torch.tensor([10.0, 20.0, 30.0, 30.0]))
    torch.testing.assert_close(bcl_d_magnitude(weights, uniform), torch.tensor([5.0, 11.25, 30.0, 10.0]))


def test_bilinear_geometry_matches_torchvision_where_fully_covered() -> None:
    # torchvision blends partially covered border pixels as mask * (mask * sample - fill) + fill,
    # fastlt as sample + (1 - mask) * fill; both agree wherever the source is fully inside.
    images = random_images(9, 6, quantised=False)
    magnitudes = torch.linspace(3, 30, 6)
    signs = torch.tensor([1.0, -1.0] * 3)
    out = apply_op(images, "rotate", magnitudes, signs, interpolation="bilinear", fill=GREY)
    for b in range(6):
        angle = float(signs[b] * magnitudes[b] * 2)
        expected = TF.rotate(images[b], angle=angle, interpolation=InterpolationMode.BILINEAR, fill=GREY_FLOAT)
        coverage = TF.rotate(torch.ones(1, HEIGHT, WIDTH), angle=angle, interpolation=InterpolationMode.BILINEAR,
                             fill=0.0)
        inside = (coverage > 1 - 1e-6).expand_as(expected)
        assert inside.sum() > 20
        torch.testing.assert_close(out[b][inside], expected[inside], atol=1e-5, rtol=0)


def as_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(as_uint8(image).permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


@pytest.mark.parametrize("op", OPS[:5])
def test_fill_argument_is_used_for_uncovered_pixels(op: str) -> None:
    images = random_images(11, 2, quantised=True)
    signs = torch.tensor([1.0, -1.0])
    out = apply_op(images, op, torch.full((2,), 30.0), signs, fill=GREY)
    for b in range(2):
        expected = bcl_geometric(as_pil(images[b]), op, signed_value(op, 30.0, float(signs[b])), fillcolor=GREY)
        assert torch.equal(as_uint8(out[b]), from_pil(expected))
        assert (from_pil(expected) == torch.tensor(GREY).view(3, 1, 1)).all(0).sum() > 5


# BCL's CIFAR size, and a non-square size at which some magnitudes shift by exactly k + 1/2 pixels.
BCL_SIZE = 32
TIE_HEIGHT, TIE_WIDTH = 50, 25
TIE_MAGNITUDES = {"translate_x": (10.0, 30.0), "translate_y": (5.0, 15.0)}  # offsets 5.5 and 16.5


@pytest.mark.parametrize("op", ["translate_x", "translate_y"])
def test_translate_rounds_the_fractional_offset_as_pil(op: str) -> None:
    # BCL hands PIL the fractional offset v = +-(M / 30 x 0.66) x size; PIL's nearest resample moves
    # the image by floor(v + 1/2) pixels: half up, so -16.5 moves 16 pixels and +16.5 moves 17.
    size = TIE_WIDTH if op == "translate_x" else TIE_HEIGHT
    levels = torch.cat([torch.tensor(TIE_MAGNITUDES[op]), torch.linspace(0, 30, 61),
                        torch.rand(60, generator=torch.Generator().manual_seed(70)) * 30])
    magnitudes = levels.repeat(2)
    signs = torch.cat([torch.ones(len(levels)), -torch.ones(len(levels))])
    batch = len(magnitudes)
    images = torch.round(torch.rand(batch, 3, TIE_HEIGHT, TIE_WIDTH, generator=torch.Generator().manual_seed(71))
                         * 255) / 255
    out = apply_op(images, op, magnitudes, signs)
    seen, truncation_differs = set(), 0
    for b in range(batch):
        value = signed_value(op, float(magnitudes[b]), float(signs[b]))
        expected = from_pil(bcl_geometric(as_pil(images[b]), op, value))
        assert torch.equal(as_uint8(out[b]), expected), (op, float(magnitudes[b]), float(signs[b]))
        offset = value * size
        fraction = abs(offset) - math.floor(abs(offset))
        seen.add((offset > 0, "below" if fraction < 0.5 else "at" if fraction == 0.5 else "above"))
        truncation_differs += math.floor(offset + 0.5) != math.trunc(offset)
    assert seen == {(s, f) for s in (True, False) for f in ("below", "at", "above")}
    assert truncation_differs > batch // 3  # a truncating shift would be a pixel short this often


@pytest.mark.parametrize("op", OPS[:5])
def test_geometric_ops_give_the_pixels_of_bcls_pil_call(op: str) -> None:
    # BCL's call on BCL's 32 x 32 uint8 RGB images, at random magnitudes and the spec levels, both signs.
    # Shears and rotations go through PIL's 16.16 fixed-point arithmetic, whose rounding a float
    # resampler misses on about one rotated image in ten.
    levels = torch.cat([torch.tensor([0.0, 15.0, 30.0]),
                        torch.rand(150, generator=torch.Generator().manual_seed(72 + OPS.index(op))) * 30])
    magnitudes = levels.repeat(2)
    signs = torch.cat([torch.ones(len(levels)), -torch.ones(len(levels))])
    images = torch.round(torch.rand(len(magnitudes), 3, BCL_SIZE, BCL_SIZE,
                                    generator=torch.Generator().manual_seed(73)) * 255) / 255
    out = apply_op(images, op, magnitudes, signs)
    for b in range(len(magnitudes)):
        value = signed_value(op, float(magnitudes[b]), float(signs[b]))
        expected = from_pil(bcl_geometric(as_pil(images[b]), op, value))
        assert torch.equal(as_uint8(out[b]), expected), (op, float(magnitudes[b]), float(signs[b]))


def test_autocontrast_agrees_with_pil_up_to_its_float_truncation() -> None:
    # A second, independent reference for the uint8 semantics: PIL's ImageOps (BCL's own op).
    images = random_images(12, 4, quantised=True) * 0.5 + 0.2
    images = torch.round(images * 255) / 255
    out = apply_op(images, "auto_contrast", torch.zeros(4))
    for b in range(4):
        pil = Image.fromarray(as_uint8(images[b]).permute(1, 2, 0).numpy())
        expected = torch.from_numpy(np.array(ImageOps.autocontrast(pil))).permute(2, 0, 1).float()
        difference = out[b] * 255 - expected
        assert torch.all((difference.abs() < 1e-3) | ((difference - 1).abs() < 1e-3))
        assert (difference.abs() < 1e-3).float().mean() > 0.95


def augment_many(num_ops: int, weights: torch.Tensor, magnitudes: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    images = random_images(seed, weights.shape[0], quantised=True) * 0.5 + 0.2  # not full range: autocontrast acts
    out = BoostedRandAugment(num_ops)(images, torch.Generator().manual_seed(seed), weights, magnitudes)
    return images, out


@pytest.mark.parametrize("num_ops", [1, 2])
def test_firing_rate_follows_weights(num_ops: int) -> None:
    levels = torch.tensor([0.0, 0.3, 0.7, 1.0])
    per_level = 1000
    weights = levels.repeat_interleave(per_level)
    # M = 20 makes every op change every image (no identity factor, bits 6, 7-pixel shift, ...).
    images, out = augment_many(num_ops, weights, torch.full_like(weights, 20.0), seed=num_ops)
    changed = (out != images).flatten(1).any(1).float().view(len(levels), per_level).mean(1)
    for w, rate in zip(levels.tolist(), changed.tolist()):
        # An op fires in at least one of k stages with 1 - (1 - w)^k; with two stages, two inverts
        # (probability (w / 15)^2) give back the input.
        expected = 1 - (1 - w) ** num_ops - (w / len(OPS)) ** 2 * (num_ops == 2)
        bound = 4 * math.sqrt(max(expected * (1 - expected), 1e-12) / per_level)
        assert abs(rate - expected) <= bound + 1e-9, (w, rate, expected)


def test_zero_weight_returns_input_unchanged() -> None:
    images = random_images(21, 16, quantised=False)
    out = BoostedRandAugment(2)(images, torch.Generator().manual_seed(0), torch.zeros(16), torch.full((16,), 30.0))
    assert torch.equal(out, images)


@pytest.mark.parametrize("num_ops", [1, 2])
def test_mean_change_grows_with_weight(num_ops: int) -> None:
    levels = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    per_level = 400
    weights = levels.repeat_interleave(per_level)
    generator = torch.Generator().manual_seed(5)
    magnitudes = (bcl_i_magnitude(weights) if num_ops == 1
                  else bcl_d_magnitude(weights, torch.rand(weights.shape, generator=generator)))
    images, out = augment_many(num_ops, weights, magnitudes, seed=30 + num_ops)
    mean_change = (out - images).abs().flatten(1).mean(1).view(len(levels), per_level).mean(1)
    assert mean_change[0] == 0
    assert torch.all(mean_change[1:] > mean_change[:-1]), mean_change


def test_same_seed_same_views_other_seed_other_views() -> None:
    images = random_images(40, 8, quantised=False)
    weights, magnitudes = torch.full((8,), 0.9), torch.full((8,), 25.0)
    augment = BoostedRandAugment(2)
    first = augment(images, torch.Generator().manual_seed(1), weights, magnitudes)
    again = augment(images, torch.Generator().manual_seed(1), weights, magnitudes)
    other = augment(images, torch.Generator().manual_seed(2), weights, magnitudes)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_any_batch_size(batch: int) -> None:
    images = random_images(41, batch, quantised=False)
    out = BoostedRandAugment(2)(images, torch.Generator().manual_seed(3), torch.ones(batch), torch.full((batch,), 20.0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1


def test_channels_last_gives_the_same_views() -> None:
    images = random_images(42, 32, quantised=True)
    weights, magnitudes = torch.ones(32), torch.full((32,), 22.0)
    augment = BoostedRandAugment(2)
    plain = augment(images, torch.Generator().manual_seed(4), weights, magnitudes)
    channels_last = augment(images.contiguous(memory_format=torch.channels_last),
                            torch.Generator().manual_seed(4), weights, magnitudes)
    assert channels_last.shape == plain.shape
    # Only the summation order of the sharpness blur / grey mean may change: float32 rounding.
    torch.testing.assert_close(channels_last, plain, atol=1e-5, rtol=0)


def test_invalid_settings_raise_one_line_errors() -> None:
    images = random_images(43, 2, quantised=False)
    with pytest.raises(FastltError, match="num_ops"):
        BoostedRandAugment(0)
    with pytest.raises(FastltError, match="interpolation"):
        BoostedRandAugment(1, interpolation="bicubic")
    with pytest.raises(FastltError, match="fill"):
        BoostedRandAugment(1, fill=(300, 0, 0))
    with pytest.raises(FastltError, match="unknown op"):
        apply_op(images, "identity", torch.zeros(2))
    with pytest.raises(FastltError, match="generator"):
        apply_op(images, "cutout", torch.zeros(2))
    with pytest.raises(FastltError, match="images"):
        BoostedRandAugment(1)(images[:, :1], torch.Generator(), torch.zeros(2), torch.zeros(2))
    with pytest.raises(FastltError, match="weights"):
        BoostedRandAugment(1)(images, torch.Generator(), torch.zeros(3), torch.zeros(2))


def test_cutout_matches_pil_rectangle_drawn_on_the_image() -> None:
    # BCL's own call on the uint8 PIL image, at the centres fastlt drew (same generator, same draw).
    batch = 64
    images = random_images(60, batch, quantised=True)
    magnitudes = torch.rand(batch, generator=torch.Generator().manual_seed(61)) * 30
    out = apply_op(images, "cutout", magnitudes, generator=torch.Generator().manual_seed(62))
    centres = torch.rand(batch, 2, generator=torch.Generator().manual_seed(62)).double()
    pushed_inside = clipped = 0
    for b in range(batch):
        fraction = signed_value("cutout", float(magnitudes[b]), 1.0)
        corners = bcl_cutout_corners(fraction, (float(centres[b, 0]), float(centres[b, 1])))
        pil = Image.fromarray(as_uint8(images[b]).permute(1, 2, 0).numpy())
        ImageDraw.Draw(pil).rectangle(corners, fill=GREY)
        expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        assert torch.equal(as_uint8(out[b]), expected), b
        side = fraction * WIDTH
        pushed_inside += float(centres[b, 0]) * WIDTH < side / 2 or float(centres[b, 1]) * HEIGHT < side / 2
        clipped += corners[0] + side > WIDTH or corners[1] + side > HEIGHT
    assert pushed_inside >= 5 and clipped >= 5  # both borders' rules were exercised


def test_cutout_centre_is_uniform_over_bcls_range() -> None:
    # BCL draws the centre with np.random.uniform(w) = uniform(low=w, high=1), i.e. in (1, w].
    # A square of side 1e-6 pixel paints the one pixel its centre falls in: column and row 0
    # only for a centre within 5e-7 of 1 (never, here), uniformly every other one (H != W,
    # so a swapped axis shows).
    batch = 6000
    images = torch.zeros(batch, 3, HEIGHT, WIDTH)
    magnitudes = torch.full((batch,), 30 * 1e-6 / (0.4 * WIDTH))
    out = apply_op(images, "cutout", magnitudes, generator=torch.Generator().manual_seed(63))
    painted = out[:, 0] > 0
    assert torch.all(painted.flatten(1).sum(1) == 1)
    numpy_draws = np.random.RandomState(0).uniform(WIDTH, size=10_000)  # the reference's call, as written
    assert numpy_draws.min() > 1 and numpy_draws.max() <= WIDTH
    for counts, bins in ((painted.sum(dim=(0, 1)), WIDTH), (painted.sum(dim=(0, 2)), HEIGHT)):
        assert counts[0] == 0
        expected = batch / (bins - 1)
        bound = 5 * math.sqrt(expected * (1 - 1 / (bins - 1)))
        assert torch.all((counts[1:] - expected).abs() < bound), counts


def replay_stages(seed: int, batch: int, num_ops: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each stage's (op index, sign) from BoostedRandAugment's documented draw order, with w = 1."""
    replay = torch.Generator().manual_seed(seed)
    stages = []
    for _ in range(num_ops):
        op = torch.randint(len(OPS), (batch,), generator=replay)
        torch.rand(batch, generator=replay)  # fire: always, w = 1
        sign = torch.randint(2, (batch,), generator=replay) * 2 - 1
        torch.rand(batch, 2, generator=replay)  # cutout centres
        stages.append((op, sign))
    return stages


def test_two_geometric_stages_match_sequential_per_image_ops() -> None:
    # Samples whose two stages are both geometric, against torchvision applied twice in a row.
    batch = 3000
    images = random_images(22, batch, quantised=True)
    magnitudes = torch.rand(batch, generator=torch.Generator().manual_seed(23)) * 30
    out = BoostedRandAugment(2)(images, torch.Generator().manual_seed(6), torch.ones(batch), magnitudes)
    (op1, sign1), (op2, sign2) = replay_stages(6, batch, 2)
    both = [b for b in range(batch) if int(op1[b]) < 5 and int(op2[b]) < 5]
    assert len(both) > 250
    for b in both:
        first = reference(images[b], OPS[op1[b]], signed_value(OPS[op1[b]], float(magnitudes[b]), float(sign1[b])),
                          (0.0, 0.0))
        expected = reference(first, OPS[op2[b]], signed_value(OPS[op2[b]], float(magnitudes[b]), float(sign2[b])),
                             (0.0, 0.0))
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=0, msg=lambda m: f"sample {b}: {m}")


def test_translate_then_opposite_translate_leaves_a_black_band() -> None:
    # BCL's PIL TranslateX/Y twice, as sequential Image.transform calls: what the first shift
    # pushed out is lost, so +t then -t blackens t columns (rows) instead of giving the input back.
    batch = 3000
    images = random_images(24, batch, quantised=True)
    out = BoostedRandAugment(2)(images, torch.Generator().manual_seed(7), torch.ones(batch),
                                torch.full((batch,), 20.0))
    (op1, sign1), (op2, sign2) = replay_stages(7, batch, 2)
    tx, ty = OPS.index("translate_x"), OPS.index("translate_y")
    undone = [b for b in range(batch)
              if int(op1[b]) == int(op2[b]) in (tx, ty) and int(sign1[b]) == -int(sign2[b])]
    assert len(undone) >= 5
    for b in undone:
        along_x = int(op1[b]) == tx
        op = "translate_x" if along_x else "translate_y"
        pil = as_pil(images[b])
        for sign in (int(sign1[b]), int(sign2[b])):
            pil = bcl_geometric(pil, op, signed_value(op, 20.0, sign))
        assert torch.equal(as_uint8(out[b]), from_pil(pil)), b
        # PIL's AFFINE data maps output to input, so a positive offset moves the content left (up) by
        # 0.44 x size rounded half up: 7 columns, 5 rows. Along the shifted axis: a black band where the
        # first shift pushed content out, the input elsewhere.
        step = math.floor(0.44 * (WIDTH if along_x else HEIGHT) + 0.5)
        got, source = (out[b], images[b]) if along_x else (out[b].transpose(1, 2), images[b].transpose(1, 2))
        band, rest = (slice(0, step), slice(step, None)) if int(sign1[b]) > 0 else (slice(-step, None), slice(0, -step))
        assert torch.all(got[..., band] == 0)
        assert torch.equal(got[..., rest], source[..., rest])


# ---------------------------------------------------------------- grouped and masked stages


def every_op_draws(per_op: int, seed: int) -> tuple[StageDraws, torch.Tensor]:
    """Draws in which every op (and "no op") is chosen by ``per_op`` samples, shuffled; magnitudes in [0, 30]."""
    generator = torch.Generator().manual_seed(seed)
    op_index = (torch.arange(-1, len(OPS)).repeat_interleave(per_op))[torch.randperm(per_op * 16, generator=generator)]
    batch = len(op_index)
    signs = torch.randint(2, (batch,), generator=generator) * 2 - 1
    draws = StageDraws(op_index, signs, torch.rand(batch, 2, generator=generator))
    return draws, torch.rand(batch, generator=generator) * 30


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_grouped_and_masked_stages_give_the_same_images(interpolation: str) -> None:
    draws, magnitudes = every_op_draws(per_op=4, seed=50)
    images = random_images(51, len(magnitudes), quantised=False)
    fill = torch.tensor([0.1, 0.2, 0.3])
    grouped = augment_stage(images, draws, magnitudes, fill, interpolation, grouped=True)
    masked = augment_stage(images, draws, magnitudes, fill, interpolation, grouped=False)
    torch.testing.assert_close(grouped, masked, rtol=0, atol=1e-6)
    unchanged = draws.op_index == -1
    assert torch.equal(grouped[unchanged], images[unchanged])
    assert (grouped[~unchanged] != images[~unchanged]).flatten(1).any(1).float().mean() > 0.9
    # Auto picks the grouped form on a CPU: bit for bit the same as asking for it.
    assert torch.equal(augment_stage(images, draws, magnitudes, fill, interpolation), grouped)


def test_grouped_stage_runs_each_family_only_on_the_samples_that_drew_it(monkeypatch) -> None:
    draws, magnitudes = every_op_draws(per_op=3, seed=52)
    images = random_images(53, len(magnitudes), quantised=False)
    seen = {}

    def spy(members, apply_family):
        def run(batch, family_draws, *args):
            seen[members] = (len(batch), sorted({OPS[i] for i in family_draws.op_index.tolist()}))
            return apply_family(batch, family_draws, *args)
        return members, run

    monkeypatch.setattr(randaugment, "FAMILIES", tuple(spy(*family) for family in FAMILIES))
    augment_stage(images, draws, magnitudes, torch.zeros(3), "nearest", grouped=True)
    assert seen == {members: (3 * len(members), sorted(members)) for members, _ in FAMILIES}


def test_drawing_then_applying_equals_one_call() -> None:
    images = random_images(54, 24, quantised=False)
    weights, magnitudes = torch.rand(24, generator=torch.Generator().manual_seed(4)), torch.full((24,), 18.0)
    augment = BoostedRandAugment(2)
    whole = augment(images, torch.Generator().manual_seed(6), weights, magnitudes)
    draws = augment.draw(weights, torch.Generator().manual_seed(6))
    assert len(draws) == 2 and torch.equal(augment.apply(images, draws, magnitudes), whole)
