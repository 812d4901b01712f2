"""BCL's memorisation-boosted RandAugment, batched on the device (docs/bcl.md).

Each sample of a batch gets ``num_ops`` stages; in each stage it draws one of the 15
ops below (uniformly, with replacement), the op fires with the sample's probability
``w`` and runs at the sample's magnitude ``M`` in [0, 30], mapped per op as
``min + M / 30 * (max - min)``. The draws of a stage (``StageDraws``) are made for the whole batch before any pixel is
touched, so the random stream never depends on the images. The ops fall into eight families:
the five geometric ops share one batched ``affine_grid`` / ``grid_sample`` with a per-sample
matrix, the four enhance ops share one blend towards a per-sample degenerate image, and the
other six ops are a family each. A stage runs in one of two ways, with equal results:

* grouped (eager on a CPU): the samples are sorted by family and each family runs only on
  the samples that drew it. Its slicing reads the family counts on the host, free on a CPU;
  a 1-op BCL-I stage at a mean weight of 0.5 then touches each image with one family at most
  half the time, instead of computing all eight families on every image.
* masked (on CUDA and inside ``torch.compile``): every family is computed on the whole batch
  and kept where a per-sample mask says so (``torch.where``). Shapes never depend on the
  draws and nothing syncs with the host, so a CUDA step never waits, and the stage compiles
  into the view pipeline, where the compiler fuses the pointwise families into few kernels.

Conventions (chosen to match torchvision's RandAugment, the tests' reference):

* Geometry works in pixel units about the image centre, like torchvision's tensor
  ``affine``. Shears pivot on the top-left corner (torchvision RandAugment's
  ``center=[0, 0]``, also PIL's ``AFFINE`` convention that BCL uses); rotation pivots on
  the centre, positive angles counter-clockwise; translations are whole pixels,
  truncated towards zero (torchvision's ``int(magnitude)``).
* Pixels a geometric op uncovers take ``fill``, black by default: BCL's PIL geometric
  ops pass no fill colour, so PIL fills 0, as torchvision's RandAugment does. Cutout
  paints its square with the CIFAR mean grey (125, 123, 114), as BCL's Cutout does.
* Cutout places its square as BCL's PIL code does: the centre is uniform in (1, W] x
  (1, H] (its ``np.random.uniform(w)`` is ``uniform(low=w, high=1)``), the top-left corner
  is max(0, centre - side / 2) truncated to a pixel, and PIL's rectangle paints through
  int(corner + side) inclusive. Near the left and top borders
  the square is pushed inside whole; only the right and bottom borders cut it.
* Interpolation is nearest by default (PIL's and torchvision RandAugment's default), so
  a geometric op moves pixels without blurring them; "bilinear" is available.
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
  its place. Each stage is one batched ``grid_sample`` (the input is kept for samples
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


def _source_matrices(op_index: Tensor, magnitudes: Tensor, signs: Tensor, height: int, width: int) -> Tensor:
    """[B, 2, 3] map from an output pixel to the input point it samples, in pixels about the centre.

    The identity for samples whose op is not geometric; one matrix per sample so that one
    ``grid_sample`` serves the whole batch.
    """
    shear = signs * _op_value("shear_x", magnitudes)  # shear_x and shear_y share the range
    shift_x = torch.trunc(signs * _op_value("translate_x", magnitudes) * width)
    shift_y = torch.trunc(signs * _op_value("translate_y", magnitudes) * height)
    angle = torch.deg2rad(signs * _op_value("rotate", magnitudes))
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(magnitudes), torch.ones_like(magnitudes)

    is_shear_x, is_shear_y = _op_mask(op_index, "shear_x"), _op_mask(op_index, "shear_y")
    is_rotate = _op_mask(op_index, "rotate")
    diagonal = torch.where(is_rotate, cos, one)
    # A shear pivoting on the top-left corner: x_src = x + s * (y + H / 2) about the centre.
    row0 = (
        diagonal,
        torch.where(is_rotate, -sin, torch.where(is_shear_x, shear, zero)),
        torch.where(is_shear_x, shear * height / 2,
                    torch.where(_op_mask(op_index, "translate_x"), -shift_x, zero)),
    )
    row1 = (
        torch.where(is_rotate, sin, torch.where(is_shear_y, shear, zero)),
        diagonal,
        torch.where(is_shear_y, shear * width / 2,
                    torch.where(_op_mask(op_index, "translate_y"), -shift_y, zero)),
    )
    return torch.stack((torch.stack(row0, dim=-1), torch.stack(row1, dim=-1)), dim=1)


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


def _resample(images: Tensor, matrices: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    """One batched affine resample with [B, 2, 3] source matrices (pixels about the centre)."""
    batch, channels, height, width = images.shape
    # affine_grid works in [-1, 1] coordinates per axis (align_corners=False: the image edges).
    to_unit = constant(((1.0, height / width, 2.0 / width), (width / height, 1.0, 2.0 / height)),
                       images.dtype, images.device)
    grid = F.affine_grid(matrices * to_unit, [batch, channels, height, width], align_corners=False)
    # Sampling (image - fill) with zero padding and adding fill back gives fill outside the
    # image; for bilinear, a border pixel blends towards fill by the fraction it is uncovered.
    offset = fill.view(1, -1, 1, 1)
    return F.grid_sample(images - offset, grid, mode=interpolation, padding_mode="zeros",
                         align_corners=False) + offset


def _geometric(images: Tensor, draws: StageDraws, magnitudes: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    """Shear, translate and rotate: one resample with a matrix per sample."""
    matrices = _source_matrices(draws.op_index, magnitudes, draws.signs.to(images.dtype), *images.shape[-2:])
    return _resample(images, matrices, fill, interpolation)


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

    The unit that is checked against torchvision per image; it runs the same batched
    stage as BoostedRandAugment with every sample choosing ``op``. ``fill`` colours the
    pixels a geometric op uncovers (0..255 per channel). ``signs`` (+-1 per
    sample, default +1) orient shear, translate and rotate. Cutout draws its centres as
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
