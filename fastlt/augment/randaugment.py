"""BCL's memorisation-boosted RandAugment, batched on the device (docs/bcl.md).

Each sample of a batch gets ``num_ops`` stages; in each stage it draws one of the 15
ops below (uniformly, with replacement), the op fires with the sample's probability
``w`` and runs at the sample's magnitude ``M`` in [0, 30], mapped per op as
``min + M / 30 * (max - min)``. The draws of a stage (``StageDraws``) are made for the whole batch before any pixel is
touched, so the random stream never depends on the images. The ops fall into eight families:
the five geometric ops share one batched resample with a per-sample affine map, the four
enhance ops share one blend towards a per-sample degenerate image, and the
other six ops are a family each. A stage runs in one of two ways, with equal results:

* grouped (eager on a CPU): the samples are sorted by family and each family runs only on
  the samples that drew it. Its slicing reads the family counts on the host, free on a CPU;
  a 1-op BCL-I stage at a mean weight of 0.5 then touches each image with one family at most
  half the time, instead of computing all eight families on every image.
* masked (on CUDA and inside ``torch.compile``): every family is computed on the whole batch
  and kept where a per-sample mask says so (``torch.where``). Shapes never depend on the
  draws and nothing syncs with the host, so a CUDA step never waits, and the stage compiles
  into the view pipeline, where the compiler fuses the pointwise families into few kernels.

Conventions (BCL's PIL calls, or torchvision's RandAugment where they agree; the tests' references):

* Geometry gives the pixels of BCL's PIL call: each sample's op becomes the AFFINE data
  BCL hands ``Image.transform`` (or the matrix ``Image.rotate`` builds), and the nearest
  resample rounds as PIL's C code does, in 16.16 fixed point for shears and rotations
  and half up for translations, whose fractional offset v x size BCL passes as it is.
  Shears pivot on the top-left corner, rotation on the centre (positive angles
  counter-clockwise), and a positive sign moves a translated image left or up, as PIL's
  data does. "bilinear" resamples the same maps with ``grid_sample``.
* Pixels a geometric op uncovers take ``fill``, black by default: BCL's PIL geometric
  ops pass no fill colour, so PIL fills 0. Cutout
  paints its square with the CIFAR mean grey (125, 123, 114), as BCL's Cutout does.
* Cutout places its square as BCL's PIL code does: the centre is uniform in (1, W] x
  (1, H] (its ``np.random.uniform(w)`` is ``uniform(low=w, high=1)``), the top-left corner
  is max(0, centre - side / 2) truncated to a pixel, and PIL's rectangle paints through
  int(corner + side) inclusive. Near the left and top borders
  the square is pushed inside whole; only the right and bottom borders cut it.
* Interpolation is nearest by default (PIL's default, which BCL keeps), so a geometric op
  moves pixels without blurring them; "bilinear" is available.
* Autocontrast, equalize, posterize and the solarize threshold are defined on uint8
  images. They see ``round(x * 255)``, exactly as torchvision treats a uint8 image;
  autocontrast, equalize and posterize return values on the 1/255 grid, solarize
  inverts the float value ``1 - x`` where the rounded value reaches the threshold. On
  inputs already on the 1/255 grid they equal torchvision's uint8 ops exactly; on
  continuous inputs they differ from torchvision's float ops by the rounding of the
  input (half a level, stretched by autocontrast's gain) plus, for autocontrast, the
  truncation to a whole level, and solarize can differ on pixels within half a level
  of the threshold.
* Every stage resamples on its own, as BCL's sequential PIL calls do: content that one
  geometric op pushes out of the frame is lost, and a later op brings back ``fill`` in
  its place. Each stage is one batched resample (the input is kept for samples
  whose op in it is not geometric or does not fire).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fastlt.errors import FastltError

OPS: tuple[str, ...] = (
    "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
    "auto_contrast", "invert", "equalize", "solarize", "posterize",
    "contrast", "color", "brightness", "sharpness", "cutout",
)
MAX_MAGNITUDE = 30.0
INTERPOLATIONS = ("nearest", "bilinear")
GEOMETRIC_FILL = (0, 0, 0)  # BCL's PIL transforms leave uncovered pixels black
CUTOUT_FILL = (125, 123, 114)  # BCL's Cutout colour

# (value at M = 0, value at M = 30); translate and cutout are fractions of the image size.
_RANGES: dict[str, tuple[float, float]] = {
    "shear_x": (0.0, 0.6), "shear_y": (0.0, 0.6),
    "translate_x": (0.0, 0.66), "translate_y": (0.0, 0.66),
    "rotate": (0.0, 60.0),
    "solarize": (0.0, 110.0),
    "posterize": (4.0, 8.0),
    "contrast": (0.1, 1.9), "color": (0.1, 1.9), "brightness": (0.1, 1.9), "sharpness": (0.1, 1.9),
    "cutout": (0.0, 0.4),
}
_GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as PIL's and torchvision's grayscale
_SMOOTH_KERNEL = tuple(tuple(v / 13.0 for v in row) for row in ((1, 1, 1), (1, 5, 1), (1, 1, 1)))  # PIL's SMOOTH


def constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor, made once per device and dtype and never written to.

    Building it per step (``torch.tensor(list, device=...)``) would be a blocking host-to-device
    copy on CUDA every time; cached, the eager step path has none. Under torch.compile it is a
    constant of the graph instead, and the cache is not traced.
    """
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    return _cached_constant(values, dtype, device)


@functools.lru_cache(maxsize=64)
def _cached_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def bcl_i_magnitude(weights: Tensor) -> Tensor:
    """BCL-I's magnitude 10 + 20 w: every sample is augmented at least moderately when its op fires."""
    return 10.0 + 20.0 * weights


def bcl_d_magnitude(weights: Tensor, shared_uniform: Tensor) -> Tensor:
    """BCL-D's magnitude 5 + 25 w U; U ~ U(0, 1) is drawn once per sample and shared by its two views."""
    return 5.0 + 25.0 * weights * shared_uniform


def _op_value(op: str, magnitudes: Tensor) -> Tensor:
    """The op's parameter for each sample's magnitude: min + M / 30 * (max - min)."""
    low, high = _RANGES[op]
    return low + magnitudes / MAX_MAGNITUDE * (high - low)


def _op_mask(op_index: Tensor, op: str) -> Tensor:
    """[B] bool: which samples run ``op`` in this stage."""
    return op_index == OPS.index(op)


def _as_image_mask(mask: Tensor) -> Tensor:
    """[B] -> [B, 1, 1, 1], to select whole images with ``torch.where``."""
    return mask.view(-1, 1, 1, 1)


def _pil_affine_data(op_index: Tensor, magnitudes: Tensor, signs: Tensor, height: int, width: int) -> Tensor:
    """[B, 6] float64: the AFFINE data (a, b, c, d, e, f) BCL's PIL call gets for each sample.

    PIL samples output pixel (x, y) at the input point (a X + b Y + c, d X + e Y + f), with
    X = x + 1/2 and Y = y + 1/2 in pixels from the top-left corner. BCL's ops (data/randaug.py:9-57)
    pass (1, v, 0, 0, 1, 0) for ShearX, (1, 0, v, 0, 1, 0) with v times the width for
    TranslateX (and their Y twins), and Image.rotate(v) builds its matrix about the image
    centre from -radians(v mod 360). (PIL also rounds that matrix's cosine and sine to 15
    decimals, which moves no 16.16 coefficient unless one lies within 1e-15 of a rounding
    edge; fastlt skips it.) Float64, the precision of BCL's Python floats, so that the
    rounding in ``_fixed_point`` lands where PIL's does. The identity for samples whose op
    is not geometric.
    """
    magnitudes, signs = magnitudes.to(torch.float64), signs.to(torch.float64)
    shear = signs * _op_value("shear_x", magnitudes)  # shear_x and shear_y share the range
    shift_x = signs * _op_value("translate_x", magnitudes) * width
    shift_y = signs * _op_value("translate_y", magnitudes) * height
    angle = -torch.deg2rad(torch.remainder(signs * _op_value("rotate", magnitudes), 360.0))
    cos, sin = torch.cos(angle), torch.sin(angle)
    centre_x, centre_y = width / 2, height / 2
    zero, one = torch.zeros_like(magnitudes), torch.ones_like(magnitudes)

    def chosen(op: str, value: Tensor, otherwise: Tensor) -> Tensor:
        return torch.where(_op_mask(op_index, op), value, otherwise)

    diagonal = chosen("rotate", cos, one)
    return torch.stack((
        diagonal,
        chosen("rotate", sin, chosen("shear_x", shear, zero)),
        chosen("rotate", cos * -centre_x + sin * -centre_y + centre_x, chosen("translate_x", shift_x, zero)),
        chosen("rotate", -sin, chosen("shear_y", shear, zero)),
        diagonal,
        chosen("rotate", -sin * -centre_x + cos * -centre_y + centre_y, chosen("translate_y", shift_y, zero)),
    ), dim=-1)


def _fixed_point(data: Tensor) -> Tensor:
    """[B, 6] int64: PIL's nearest-neighbour affine in 16.16 fixed point (libImaging/Geometry.c).

    Any shear or rotation goes through PIL's ``affine_fixed``: each coefficient is rounded
    to FIX(v) = floor(65536 v + 1/2), the offsets after moving to the pixel centres, and the
    input pixel is the fixed-point sum shifted right by 16 (a floor). Data without cross
    terms (translations, the identity) go through ``ImagingScaleAffine``, which floors
    c + a (x + 1/2) in floating point: with a = 1, as here, that is x + floor(c + 1/2), the
    offset rounded half up, which the same fixed-point form holds exactly.
    """
    a, b, c, d, e, f = data.unbind(-1)

    def fix(value: Tensor) -> Tensor:
        return torch.floor(value * 65536.0 + 0.5).to(torch.int64)

    def half_up(offset: Tensor) -> Tensor:
        return torch.floor(offset + 0.5).to(torch.int64) * 65536 + 32768

    general = torch.stack((fix(a), fix(b), fix(c + a * 0.5 + b * 0.5),
                           fix(d), fix(e), fix(f + d * 0.5 + e * 0.5)), dim=-1)
    one = torch.full_like(general[:, 0], 65536)
    zero = torch.zeros_like(one)
    whole = torch.stack((one, zero, half_up(c), zero, one, half_up(f)), dim=-1)
    return torch.where(((b == 0) & (d == 0)).unsqueeze(-1), whole, general)


def _nearest_indices(data: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """[B, H, W] int32 input column and row of each output pixel, as PIL's NEAREST picks them.

    The fixed-point sums stay below 2^31 for images under 32768 pixels a side, the range in which
    PIL itself uses fixed point.
    """
    a, b, c, d, e, f = (value.to(torch.int32).view(-1, 1, 1) for value in _fixed_point(data).unbind(-1))
    rows = torch.arange(height, dtype=torch.int32, device=data.device).view(1, -1, 1)
    columns = torch.arange(width, dtype=torch.int32, device=data.device).view(1, 1, -1)
    return (c + rows * b + columns * a) >> 16, (f + rows * e + columns * d) >> 16


def _nearest(images: Tensor, data: Tensor, fill: Tensor) -> Tensor:
    """PIL's NEAREST affine resample of a batch, a [B, 6] data row per sample; ``fill`` where it samples outside.

    One gather from the pixels with the fill colour appended as pixel H x W, where every
    outside sample points.
    """
    batch, channels, height, width = images.shape
    column, row = _nearest_indices(data, height, width)
    inside = (column >= 0) & (column < width) & (row >= 0) & (row < height)
    source = torch.where(inside, row * width + column, height * width).to(torch.int64).view(batch, 1, -1)
    pixels = torch.cat((images.reshape(batch, channels, height * width),
                        fill.view(1, -1, 1).expand(batch, channels, 1)), dim=2)
    return pixels.gather(2, source.expand(batch, channels, -1)).view(images.shape)


def _bilinear(images: Tensor, data: Tensor, fill: Tensor) -> Tensor:
    """The same map resampled bilinearly (``grid_sample``): fastlt's option, not BCL's."""
    batch, channels, height, width = images.shape
    a, b, c, d, e, f = data.unbind(-1)
    # affine_grid's [-1, 1] coordinates (align_corners=False: the image edges) in and out.
    b, d = b * (height / width), d * (width / height)
    theta = torch.stack((torch.stack((a, b, a + b + 2 * c / width - 1), dim=-1),
                         torch.stack((d, e, d + e + 2 * f / height - 1), dim=-1)), dim=1)
    grid = F.affine_grid(theta.to(images.dtype), [batch, channels, height, width], align_corners=False)
    # Sampling (image - fill) with zero padding and adding fill back gives fill outside the
    # image; a border pixel blends towards fill by the fraction it is uncovered.
    offset = fill.view(1, -1, 1, 1)
    return F.grid_sample(images - offset, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + offset


@dataclass(frozen=True)
class StageDraws:
    """One stage's random choices, a row per sample, drawn before any pixel is touched."""

    op_index: Tensor  # [B] int64 index into OPS; -1 where the op does not fire
    signs: Tensor  # [B] +-1, the direction of shear, translate and rotate
    centres: Tensor  # [B, 2] uniform in [0, 1): the cutout centre before scaling

    def rows(self, rows: Tensor) -> StageDraws:
        """The draws of the samples ``rows`` only."""
        return StageDraws(self.op_index[rows], self.signs[rows], self.centres[rows])


# A family's function maps (images, draws, magnitudes, fill, interpolation) to the images with
# each sample's op of the family applied; it is only ever asked about samples of its family.
FamilyFunction = Callable[[Tensor, StageDraws, Tensor, Tensor, str], Tensor]


def _geometric(images: Tensor, draws: StageDraws, magnitudes: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    """Shear, translate and rotate: one resample with BCL's PIL data per sample."""
    data = _pil_affine_data(draws.op_index, magnitudes, draws.signs, *images.shape[-2:])
    return _nearest(images, data, fill) if interpolation == "nearest" else _bilinear(images, data, fill)


def _levels(images: Tensor) -> Tensor:
    """The uint8 image torchvision would see, as floats."""
    return torch.round(images.float() * 255.0)


def _from_levels(levels: Tensor, like: Tensor) -> Tensor:
    return (levels / 255.0).to(like.dtype)


def _auto_contrast_levels(levels: Tensor) -> Tensor:
    """Stretch each channel's [min, max] to [0, 255], truncated like PIL and torchvision's uint8 op."""
    low = levels.amin(dim=(-2, -1), keepdim=True)
    span = levels.amax(dim=(-2, -1), keepdim=True) - low
    stretched = torch.floor((levels - low) * 255.0 / span.clamp(min=1.0))
    return torch.where(span > 0, stretched, levels)


def _equalize_levels(levels: Tensor) -> Tensor:
    """PIL's histogram equalisation per image and channel, from one batched histogram.

    The lookup table maps level k to round(#pixels below k / step) with step = #pixels
    not at the channel's top level // 255; a channel with step 0 is left as it is.
    """
    batch, channels, height, width = levels.shape
    flat = levels.reshape(batch, channels, height * width).long()  # the one per-pixel int64 tensor
    histogram = torch.zeros(batch, channels, 256, dtype=torch.long, device=levels.device)
    histogram.scatter_add_(-1, flat, torch.ones(1, dtype=torch.long, device=levels.device).expand_as(flat))
    below = histogram.cumsum(-1) - histogram
    at_top = histogram.gather(-1, flat.amax(-1, keepdim=True))
    step = (height * width - at_top) // 255
    table = ((below + step // 2) // step.clamp(min=1)).clamp(max=255).to(levels.dtype)  # levels are exact floats
    equalized = table.gather(-1, flat).reshape(levels.shape)
    return torch.where((step > 0).unsqueeze(-1), equalized, levels)


def _posterize_levels(levels: Tensor, bits: Tensor) -> Tensor:
    """Keep the top ``bits`` bits of each 8-bit level (bits per sample, 4..8)."""
    dropped = (8 - bits).view(-1, 1, 1, 1)
    whole = levels.to(torch.int32)
    return ((whole >> dropped) << dropped).to(levels.dtype)


def _auto_contrast(images: Tensor, draws: StageDraws, magnitudes: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    return _from_levels(_auto_contrast_levels(_levels(images)), images)


def _invert(images: Tensor, draws: StageDraws, magnitudes: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    return 1 - images


def _equalize(images: Tensor, draws: StageDraws, magnitudes: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    return _from_levels(_equalize_levels(_levels(images)), images)


def _solarize(images: Tensor, draws: StageDraws, magnitudes: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    """Invert the float value where the uint8 level reaches the sample's threshold."""
    threshold = _as_image_mask(_op_value("solarize", magnitudes))
    return torch.where(_levels(images) >= threshold, 1 - images, images)


def _posterize(images: Tensor, draws: StageDraws, magnitudes: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    bits = torch.floor(_op_value("posterize", magnitudes)).clamp(4, 8).to(torch.int32)
    return _from_levels(_posterize_levels(_levels(images), bits), images)


def _blend_degenerate(images: Tensor, op_index: Tensor) -> Tensor:
    """The image each enhance op blends away from: black, grey, mean grey or blurred.

    One blend ``f * x + (1 - f) * degenerate`` then serves brightness, color, contrast
    and sharpness for a whole batch.
    """
    red, green, blue = images.unbind(dim=1)
    grey = (_GREY_WEIGHTS[0] * red + _GREY_WEIGHTS[1] * green + _GREY_WEIGHTS[2] * blue).unsqueeze(1)
    mean_grey = grey.mean(dim=(-2, -1), keepdim=True)
    channels = images.shape[1]
    kernel = constant(_SMOOTH_KERNEL, images.dtype, images.device).expand(channels, 1, 3, 3)
    blurred = images.clone()  # the one-pixel border keeps its values, as in PIL and torchvision
    blurred[..., 1:-1, 1:-1] = F.conv2d(images, kernel, groups=channels)
    is_mean = _as_image_mask(_op_mask(op_index, "contrast"))
    is_grey = _as_image_mask(_op_mask(op_index, "color"))
    is_black = _as_image_mask(_op_mask(op_index, "brightness"))
    return torch.where(is_black, torch.zeros_like(images),
                       torch.where(is_grey, grey, torch.where(is_mean, mean_grey, blurred)))


def _enhance(images: Tensor, draws: StageDraws, magnitudes: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    """Contrast, color, brightness and sharpness: one blend; the four ops share the factor range."""
    factor = _as_image_mask(_op_value("contrast", magnitudes))
    return (factor * images + (1 - factor) * _blend_degenerate(images, draws.op_index)).clamp(0, 1)


def _cutout_box(images: Tensor, magnitudes: Tensor, centres: Tensor) -> Tensor:
    """[B, 1, H, W] bool: BCL's Cutout square, for uniform draws centres [B, 2] in [0, 1).

    BCL clamps the corner at 0 before truncating it, so the square stays whole at the left
    and top borders; PIL's rectangle paints corner .. int(corner + side) inclusive and
    clips at the right and bottom. The side is a fraction of the width on both axes, and
    side 0 paints nothing (BCL's Cutout returns the image).
    """
    _, _, height, width = images.shape
    side = (_op_value("cutout", magnitudes) * width).view(-1, 1)
    # BCL calls np.random.uniform(w), i.e. uniform(low=w, high=1): the centre lies in (1, W] x (1, H].
    size = constant((width, height), centres.dtype, centres.device)
    drawn = size - (size - 1) * centres
    corner = torch.floor((drawn - side / 2).clamp(min=0))
    far = torch.floor(corner + side)  # inclusive, like PIL; pixels past the border do not exist
    columns = torch.arange(width, device=images.device, dtype=corner.dtype)
    rows = torch.arange(height, device=images.device, dtype=corner.dtype)
    in_columns = (columns >= corner[:, :1]) & (columns <= far[:, :1]) & (side > 0)
    in_rows = (rows >= corner[:, 1:]) & (rows <= far[:, 1:])
    return (in_rows.unsqueeze(-1) & in_columns.unsqueeze(-2)).unsqueeze(1)


def _cutout(images: Tensor, draws: StageDraws, magnitudes: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    box = _cutout_box(images, magnitudes, draws.centres.to(images.dtype))
    return torch.where(box, _fill_tensor(CUTOUT_FILL, images).view(1, -1, 1, 1), images)


FAMILIES: tuple[tuple[tuple[str, ...], FamilyFunction], ...] = (
    (("shear_x", "shear_y", "translate_x", "translate_y", "rotate"), _geometric),
    (("auto_contrast",), _auto_contrast),
    (("invert",), _invert),
    (("equalize",), _equalize),
    (("solarize",), _solarize),
    (("posterize",), _posterize),
    (("contrast", "color", "brightness", "sharpness"), _enhance),
    (("cutout",), _cutout),
)
# Family code of each op index + 1: 0 for "no op" (-1), then 1.. in FAMILIES order.
GROUPED_DEVICES = ("cpu",)  # device types whose eager stages run grouped (a host read there is free)
_FAMILY_CODES = (0,) + tuple(next(code for code, (members, _) in enumerate(FAMILIES, 1) if op in members)
                             for op in OPS)


def runs_grouped(device: torch.device) -> bool:
    """Whether eager stages on this device type run grouped (``GROUPED_DEVICES``)."""
    return device.type in GROUPED_DEVICES


def _family_codes(op_index: Tensor) -> Tensor:
    """[B] int64: each sample's family code (0 = no op this stage)."""
    return constant(_FAMILY_CODES, torch.long, op_index.device)[op_index + 1]


def _masked_stage(images: Tensor, draws: StageDraws, magnitudes: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    """Every family on the whole batch, kept where a sample drew it: static shapes, no host sync."""
    family = _family_codes(draws.op_index)
    out = images
    for code, (_, apply_family) in enumerate(FAMILIES, 1):
        chose = _as_image_mask(family == code)
        out = torch.where(chose, apply_family(images, draws, magnitudes, fill, interpolation), out)
    return out


def _grouped_stage(images: Tensor, draws: StageDraws, magnitudes: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    """Each family on the samples that drew it only; the slices need the family counts on the host."""
    family = _family_codes(draws.op_index)
    counts = torch.bincount(family, minlength=len(FAMILIES) + 1).tolist()
    order = torch.argsort(family, stable=True)
    out = images.clone()
    start = counts[0]  # the samples whose op does not fire come first and stay as they are
    for code, (_, apply_family) in enumerate(FAMILIES, 1):
        rows = order[start:start + counts[code]]
        start += counts[code]
        if len(rows):
            out[rows] = apply_family(images[rows], draws.rows(rows), magnitudes[rows], fill, interpolation)
    return out


def augment_stage(images: Tensor, draws: StageDraws, magnitudes: Tensor, fill: Tensor, interpolation: str,
                  grouped: bool | None = None) -> Tensor:
    """One RandAugment stage: sample b runs OPS[draws.op_index[b]], or nothing where it is -1.

    ``grouped`` None picks the grouped form for eager stages on ``GROUPED_DEVICES`` and the
    masked form otherwise; both give the same images. Each stage's geometric ops resample here and now,
    as BCL's PIL call per op does, so what one stage pushes out of the frame is gone for the next.
    """
    if grouped is None:
        grouped = runs_grouped(images.device) and not torch.compiler.is_compiling()
    run = _grouped_stage if grouped else _masked_stage
    return run(images, draws, magnitudes.to(images.dtype), fill, interpolation)


def _check_images(images: Tensor, where: str) -> None:
    """Shapes and dtype are static, so checking them costs no host synchronisation."""
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise FastltError(f"{where} images: expected a float tensor [B, 3, H, W] in [0, 1], "
                          f"got {images.dtype} {tuple(images.shape)}")


def _check_per_sample(values: Tensor, name: str, batch: int, where: str) -> None:
    if values.shape != (batch,):
        raise FastltError(f"{where} {name}: expected shape ({batch},), got {tuple(values.shape)}")


def _fill_tensor(fill: tuple[int, int, int], like: Tensor) -> Tensor:
    """The 0..255 fill colour on the [0, 1] scale of the images, on their device."""
    return constant(tuple(value / 255.0 for value in fill), like.dtype, like.device)


def _check_settings(fill: tuple[int, int, int], interpolation: str, where: str) -> None:
    if len(fill) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in fill):
        raise FastltError(f"{where} fill: expected three integers in 0..255, got {fill!r}")
    if interpolation not in INTERPOLATIONS:
        raise FastltError(f"{where} interpolation: expected one of {INTERPOLATIONS}, got {interpolation!r}")


def apply_op(images: Tensor, op: str, magnitudes: Tensor, signs: Tensor | None = None,
             generator: torch.Generator | None = None, *, fill: tuple[int, int, int] = GEOMETRIC_FILL,
             interpolation: str = "nearest") -> Tensor:
    """Apply one op to every image of a batch, at per-sample magnitudes M in [0, 30].

    The unit that is checked against BCL's PIL calls and torchvision per image; it runs the
    same batched stage as BoostedRandAugment with every sample choosing ``op``. ``fill``
    colours the pixels a geometric op uncovers (0..255 per channel). ``signs`` (+-1 per
    sample, default +1) multiply the value of shear, translate and rotate, as BCL's random
    negation does. Cutout draws its centres as
    ``torch.rand(B, 2, generator=generator)`` scaled by (W, H), so it needs a generator.
    """
    where = f"apply_op {op}"
    if op not in OPS:
        raise FastltError(f"apply_op op: unknown op {op!r}, expected one of {OPS}")
    _check_images(images, where)
    _check_settings(fill, interpolation, where)
    batch = images.shape[0]
    _check_per_sample(magnitudes, "magnitudes", batch, where)
    if signs is None:
        signs = torch.ones(batch, device=images.device)
    _check_per_sample(signs, "signs", batch, where)
    if op == "cutout":
        if generator is None:
            raise FastltError("apply_op cutout: needs a generator to draw the cutout centres")
        centres = torch.rand(batch, 2, generator=generator, device=images.device)
    else:
        centres = torch.zeros(batch, 2, device=images.device)
    op_index = torch.full((batch,), OPS.index(op), dtype=torch.long, device=images.device)
    draws = StageDraws(op_index, signs, centres)
    return augment_stage(images, draws, magnitudes, _fill_tensor(fill, images), interpolation)


class BoostedRandAugment:
    """RandAugment whose per-sample firing probability and magnitude come from BCL's memory.

    ``num_ops`` stages per view (BCL-I 1, BCL-D 2). Per stage the generator draws, in
    this order: op index uniform over OPS [B], fire ~ Bernoulli(w) [B], sign +-1 [B],
    cutout centre [B, 2] uniform in [0, 1) (times W, H); all draws happen whatever the
    outcome, so the amount of randomness consumed never depends on tensor values.
    """

    def __init__(self, num_ops: int, fill: tuple[int, int, int] = GEOMETRIC_FILL, interpolation: str = "nearest"):
        if not isinstance(num_ops, int) or num_ops < 1:
            raise FastltError(f"BoostedRandAugment num_ops: expected a positive integer, got {num_ops!r}")
        _check_settings(tuple(fill), interpolation, "BoostedRandAugment")
        self.num_ops = num_ops
        self.fill = tuple(fill)
        self.interpolation = interpolation

    def draw(self, weights: Tensor, generator: torch.Generator) -> tuple[StageDraws, ...]:
        """Every stage's choices for a batch whose samples fire with probabilities ``weights`` [B]."""
        batch, device = weights.shape[0], weights.device
        stages = []
        for _ in range(self.num_ops):
            drawn = torch.randint(len(OPS), (batch,), generator=generator, device=device)
            fires = torch.rand(batch, generator=generator, device=device) < weights
            signs = torch.randint(2, (batch,), generator=generator, device=device) * 2 - 1
            centres = torch.rand(batch, 2, generator=generator, device=device)
            stages.append(StageDraws(torch.where(fires, drawn, torch.full_like(drawn, -1)), signs, centres))
        return tuple(stages)

    def apply(self, images: Tensor, draws: tuple[StageDraws, ...], magnitudes: Tensor) -> Tensor:
        """Run drawn stages on [B, 3, H, W] images in [0, 1] at per-sample magnitudes [B] in [0, 30]."""
        where = "BoostedRandAugment"
        _check_images(images, where)
        _check_per_sample(magnitudes, "magnitudes", images.shape[0], where)
        fill = _fill_tensor(self.fill, images)
        for stage in draws:
            images = augment_stage(images, stage, magnitudes, fill, self.interpolation)
        return images

    def __call__(self, images: Tensor, generator: torch.Generator, weights: Tensor, magnitudes: Tensor) -> Tensor:
        """Draw and run: weights [B] fire the ops, magnitudes [B] in [0, 30] scale them."""
        _check_images(images, "BoostedRandAugment")
        _check_per_sample(weights, "weights", images.shape[0], "BoostedRandAugment")
        return self.apply(images, self.draw(weights, generator), magnitudes)
