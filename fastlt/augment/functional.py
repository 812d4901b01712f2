"""Batched image ops with one parameter per sample, each equal per image to torchvision's.

Images are float tensors [B, C, H, W] with values in [0, 1] (``to_float`` makes them from
uint8); per-sample parameters are 1-D tensors [B] on the images' device. Every op works
on the whole batch at once, with no Python loop over samples, so the same code runs on
CPU and CUDA and can be traced by torch.compile. Reference semantics are
``torchvision.transforms.v2.functional`` on one float image with the same parameters.

Geometry (crop + resize + flip, Gaussian blur) is separable resampling: each sample gets a
row matrix [out_h, H] and a column matrix [out_w, W] and the output is rows @ image @ cols^T,
two batched matmuls that reproduce torch's interpolate / torchvision's blur exactly
(up to float summation order).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# ITU-R 601-2 luma weights as torchvision rounds them (it multiplies r, g, b by these).
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)

# Cubic convolution parameter: torch's plain bicubic interpolate uses -0.75; its antialiased
# path (like PIL) uses -0.5 for every scale, upsampling included.
CUBIC_A_PLAIN = -0.75
CUBIC_A_ANTIALIAS = -0.5

# Per-sample choice of colour blend in adjust_colour (the order of torchvision's ColorJitter).
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2

# Radius of each filter in filter units (taps at offsets -radius+1 .. radius when not antialiased).
FILTER_RADIUS = {"bilinear": 1, "bicubic": 2}


def to_float(images_uint8: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] -> float32 in [0, 1], same memory format (the store keeps uint8, 4x smaller)."""
    return images_uint8.to(torch.float32).div_(255.0)


def _per_sample(values: Tensor, images: Tensor) -> Tensor:
    """[B] parameters -> [B, 1, 1, 1] in the images' dtype, so they broadcast over C, H, W."""
    return values.to(images.dtype).reshape(-1, 1, 1, 1)


def _cubic(x: Tensor, a: float) -> Tensor:
    """Cubic convolution kernel with parameter a (zero for |x| >= 2)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((x - 5) * x + 8) * x * a - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _triangle(x: Tensor) -> Tensor:
    """Linear interpolation (tent) kernel, zero for |x| >= 1."""
    return (1 - x.abs()).clamp_min(0)


def _filter(interpolation: str, antialias: bool) -> Callable[[Tensor], Tensor]:
    """The 1-D resampling kernel torch uses for this mode and antialias setting."""
    if interpolation == "bilinear":
        return _triangle
    if interpolation == "bicubic":
        a = CUBIC_A_ANTIALIAS if antialias else CUBIC_A_PLAIN
        return lambda x: _cubic(x, a)
    raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")


def _resampling_matrix(
    starts: Tensor, lengths: Tensor, out_size: int, in_size: int, interpolation: str, antialias: bool
) -> Tensor:
    """[B, out_size, in_size] weights that resize the window [start, start + length) of each sample.

    Reproduces ``interpolate(..., align_corners=False)`` on the cropped window: output pixel i
    is centred at start + scale * (i + 0.5) with scale = length / out_size.
    Antialiased: the kernel is stretched by max(scale, 1), evaluated at every window pixel
    centre, truncated at the window edges and renormalised (torch's / PIL's scheme).
    Plain: the kernel's taps around the source position are clamped to the window edge pixels.
    """
    kernel = _filter(interpolation, antialias)
    starts = starts.to(torch.float32)[:, None, None]
    lengths = lengths.to(torch.float32)[:, None, None]
    scale = lengths / out_size
    outputs = torch.arange(out_size, dtype=torch.float32, device=starts.device)[None, :, None]
    pixels = torch.arange(in_size, dtype=torch.float32, device=starts.device)[None, None, :]
    centres = starts + scale * (outputs + 0.5)  # [B, out, 1], absolute coordinates
    if antialias:
        stretch = scale.clamp_min(1.0)
        inside = (pixels >= starts) & (pixels < starts + lengths)
        weights = kernel((pixels + 0.5 - centres) / stretch) * inside
        return weights / weights.sum(dim=2, keepdim=True)
    source = centres - 0.5
    first_tap = source.floor()
    last_pixel = starts + lengths - 1
    radius = FILTER_RADIUS[interpolation]
    weights = torch.zeros(starts.shape[0], out_size, in_size, device=starts.device)
    for offset in range(1 - radius, radius + 1):  # taps, not samples: 2 or 4 iterations
        tap = first_tap + offset
        target = torch.minimum(torch.maximum(tap, starts), last_pixel)
        weights = weights + kernel(source - tap) * (pixels == target)
    return weights


def _apply_separable(images: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """rows [B, oh, H] @ images [B, C, H, W] @ cols[B, ow, W]^T -> [B, C, oh, ow]."""
    images = torch.matmul(rows[:, None].to(images.dtype), images)
    return torch.matmul(images, cols[:, None].transpose(2, 3).to(images.dtype))


def resized_crop(
    images: Tensor,
    boxes: Tensor,
    size: tuple[int, int],
    flip: Tensor | None = None,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Crop each image to its box, resize to ``size`` and mirror it where ``flip``; one pass.

    boxes [B, 4] = (top, left, height, width) in whole pixels (any dtype), inside the image,
    at least one pixel high and wide. Per image this equals torchvision's
    ``resized_crop(img, top, left, height, width, size, interpolation, antialias)`` then
    ``hflip`` where flip is True. Like torchvision on float input, bicubic output is not
    clamped (it may overshoot [0, 1] slightly); the view pipeline clamps.
    """
    out_h, out_w = size
    rows = _resampling_matrix(boxes[:, 0], boxes[:, 2], out_h, images.shape[-2], interpolation, antialias)
    cols = _resampling_matrix(boxes[:, 1], boxes[:, 3], out_w, images.shape[-1], interpolation, antialias)
    if flip is not None:
        cols = torch.where(flip[:, None, None], cols.flip(1), cols)
    return _apply_separable(images, rows, cols)


def padded_crop(images: Tensor, offsets: Tensor, padding: int, flip: Tensor | None = None) -> Tensor:
    """torchvision's RandomCrop(size of the image, padding) with zero fill, then hflip where ``flip``, as one gather.

    images [B, C, H, W] (any dtype); offsets [B, 2] = (top, left) of each crop in the padded
    image, in [0, 2 * padding]. Per image this equals ``crop(pad(img, padding), top, left, H, W)``.
    Works on uint8, so the SDCLR probe crops before it converts to float.
    """
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(height, device=images.device)  # [B, H]
    cols = offsets[:, 1:] + torch.arange(width, device=images.device)  # [B, W]
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    samples = torch.arange(batch, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[samples, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _luma(images: Tensor) -> Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] grey level with torchvision's luma weights."""
    red, green, blue = images.unbind(dim=1)
    return (LUMA_WEIGHTS[0] * red + LUMA_WEIGHTS[1] * green + LUMA_WEIGHTS[2] * blue)[:, None]


def _blend(images: Tensor, other: Tensor, factors: Tensor) -> Tensor:
    """factor * images + (1 - factor) * other, clamped to [0, 1]: the common form of the colour ops."""
    factor = _per_sample(factors, images)
    return (factor * images + (1 - factor) * other).clamp(0.0, 1.0)


def adjust_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Scale every pixel by its sample's factor (>= 0); 1 leaves the image unchanged."""
    return (images * _per_sample(factors, images)).clamp(0.0, 1.0)


def adjust_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Blend each image with its mean grey level; 0 gives flat grey, 1 the image itself."""
    mean = _luma(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factors)


def adjust_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Blend each image with its own greyscale version; 0 gives grey, 1 the image itself."""
    return _blend(images, _luma(images), factors)


def adjust_colour(images: Tensor, ops: Tensor, factors: Tensor) -> Tensor:
    """Brightness, contrast or saturation, chosen per sample by ops [B] (BRIGHTNESS, CONTRAST, SATURATION).

    All three blend the image with a reference (black, its mean grey level, its greyscale
    version), so a batch with mixed choices costs one blend; the colour-jitter stage of the
    views uses it to run each sample's ops in that sample's own order.
    """
    luma = _luma(images)
    op = ops.reshape(-1, 1, 1, 1)
    mean = luma.mean(dim=(1, 2, 3), keepdim=True)
    reference = torch.where(op == BRIGHTNESS, torch.zeros_like(mean), torch.where(op == CONTRAST, mean, luma))
    return _blend(images, reference, factors)


def adjust_hue(images: Tensor, hue_factors: Tensor) -> Tensor:
    """Rotate each image's hue by its factor in [-0.5, 0.5] turns (HSV space, S and V kept).

    Hue is computed in sixths of a turn; the way back uses the continuous form
    channel = V - V*S*clamp(min(k, 4 - k), 0, 1) with k = (n + 6*hue) mod 6 and n = 5, 3, 1
    for R, G, B, so no sector branching is needed.
    """
    red, green, blue = images.unbind(dim=1)
    value = images.amax(dim=1)
    chroma = value - images.amin(dim=1)
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue_sixths = torch.where(
        value == red,
        (green - blue) / safe_chroma,
        torch.where(value == green, 2 + (blue - red) / safe_chroma, 4 + (red - green) / safe_chroma),
    )
    saturation = chroma / torch.where(value > 0, value, torch.ones_like(value))
    hue_sixths = hue_sixths + 6 * hue_factors.to(images.dtype).reshape(-1, 1, 1)
    k = torch.stack([torch.remainder(hue_sixths + offset, 6.0) for offset in (5.0, 3.0, 1.0)], dim=1)
    ramp = torch.minimum(k, 4 - k).clamp(0.0, 1.0)
    return value[:, None] * (1 - saturation[:, None] * ramp)


def rgb_to_grayscale(images: Tensor, num_output_channels: int = 3) -> Tensor:
    """Luma of each RGB image, repeated to ``num_output_channels`` (1 or 3) so it can replace RGB."""
    if num_output_channels not in (1, 3):
        raise ValueError(f"num_output_channels must be 1 or 3, got {num_output_channels}")
    grey = _luma(images)
    return grey.expand(-1, num_output_channels, -1, -1)


def _reflect_blur_matrix(kernels: Tensor, size: int) -> Tensor:
    """[B, size, size] matrix that convolves a line of pixels with each sample's kernel [B, k].

    Out-of-range taps are reflected about the edge pixel (``pad(mode="reflect")``), so the
    matrix is the convolution with the padding folded in.
    """
    kernel_size = kernels.shape[1]
    radius = kernel_size // 2
    device = kernels.device
    taps = torch.arange(kernel_size, device=device)[:, None, None]
    outputs = torch.arange(size, device=device)[None, :, None]
    pixels = torch.arange(size, device=device)[None, None, :]
    source = outputs + taps - radius
    source = torch.where(source < 0, -source, source)
    source = torch.where(source > size - 1, 2 * (size - 1) - source, source)
    hits = (source == pixels).to(kernels.dtype)  # [k, size, size], one-hot per tap
    return torch.einsum("bt,toi->boi", kernels, hits)


def gaussian_blur(images: Tensor, sigmas: Tensor, kernel_size: int) -> Tensor:
    """Blur each image with a Gaussian of its own sigma; kernel_size is odd, edges reflected.

    Equals torchvision's ``gaussian_blur(img, [kernel_size] * 2, [sigma] * 2)`` per image.
    The kernel taps sit at integer offsets from the centre and are normalised to sum 1.
    """
    height, width = images.shape[-2:]
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if kernel_size // 2 >= min(height, width):
        raise ValueError(f"kernel_size {kernel_size} too large for reflect padding of a {height}x{width} image")
    offsets = torch.arange(kernel_size, dtype=torch.float32, device=images.device) - kernel_size // 2
    sigma = sigmas.to(torch.float32)[:, None]
    kernels = torch.softmax(-0.5 * (offsets[None, :] / sigma) ** 2, dim=1)  # exp, normalised
    return _apply_separable(images, _reflect_blur_matrix(kernels, height), _reflect_blur_matrix(kernels, width))
