"""Frozen feature extraction against a plain per-image loop over the same module in eval mode, and its seeded
RandomCrop(pad 4) + flip views against torchvision's functional crop."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fastlt.errors import FastltError
from fastlt.measure.features import PaddedCropViews, extract_features


def tiny_backbone() -> nn.Module:
    """Conv + BN (with non-trivial running stats) + dropout: its output depends on train/eval mode."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    net[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    net[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.5, 0.8]))
    return net


def loop_reference(net: nn.Module, images: np.ndarray) -> torch.Tensor:
    """One image at a time: uint8 HWC -> float CHW in [0, 1] -> the eval-mode net."""
    net.eval()
    with torch.no_grad():
        rows = [net(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255)[0] for image in images]
    return torch.stack(rows)


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(7, 6, 5, 3), dtype=np.uint8)


def test_matches_per_image_loop_across_batch_boundaries(images):
    net = tiny_backbone().train()
    seen = []
    net[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    features = extract_features(net, images, "cpu", batch_size=3)
    assert [len(batch) for batch in seen] == [3, 3, 1]
    assert all(batch.is_contiguous(memory_format=torch.channels_last) and batch.dtype == torch.float32 for batch in seen)
    assert 0.0 <= min(float(b.min()) for b in seen) and max(float(b.max()) for b in seen) <= 1.0
    assert features.dtype == torch.float32 and features.shape == (7, 5)
    torch.testing.assert_close(features, loop_reference(net, images), rtol=1e-5, atol=1e-5)


def test_restores_each_module_mode(images):
    net = tiny_backbone().train()
    net[3].eval()  # a mixed state must come back as it was
    extract_features(net, images, "cpu", batch_size=4)
    assert [module.training for module in net] == [True, True, True, False, True, True, True]
    net.eval()
    extract_features(net, images, "cpu")
    assert not any(module.training for module in net.modules())


def test_tensor_and_channels_last_inputs_equal_numpy(images):
    net = tiny_backbone()
    expected = extract_features(net, images, "cpu", batch_size=2)
    nhwc = torch.from_numpy(images)
    # The same pixels stored channels-first, viewed as NHWC: a non-contiguous tensor.
    strided = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).permute(0, 2, 3, 1)
    assert not strided.is_contiguous()
    torch.testing.assert_close(extract_features(net, nhwc, "cpu", batch_size=2), expected, rtol=0, atol=0)
    torch.testing.assert_close(extract_features(net, strided, "cpu", batch_size=5), expected, rtol=1e-6, atol=1e-6)


def test_read_only_array_without_warning(images):
    images.flags.writeable = False  # what a read-only memory-mapped store gives
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract_features(tiny_backbone(), images, "cpu")


def test_bf16_autocast_returns_float32_close_to_fp32(images):
    net = tiny_backbone()
    full = extract_features(net, images, "cpu")
    half = extract_features(net, images, "cpu", autocast_dtype=torch.bfloat16)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 3, 8, 8), np.uint8), np.zeros((2, 8, 8, 3), np.float32), np.zeros((0, 8, 8, 3), np.uint8)],
)
def test_rejects_non_uint8_nhwc(bad):
    with pytest.raises(FastltError, match="images"):
        extract_features(tiny_backbone(), bad, "cpu")


@pytest.mark.parametrize("height, width, side", [(16, 16, 12), (15, 20, 8), (10, 10, 10)])
def test_center_crop_feeds_torchvisions_center_crop(height, width, side):
    import torchvision.transforms.v2.functional as TF

    images = torch.randint(0, 256, (5, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    features = extract_features(nn.Flatten(), images.numpy(), "cpu", batch_size=2, center_crop=side)
    for b in range(5):
        expected = TF.center_crop(images[b].permute(2, 0, 1), [side, side]).float() / 255
        assert torch.equal(features[b], expected.flatten())
    with pytest.raises(FastltError, match=f"eval.center_crop {min(height, width) + 1}: larger than the "
                                          f"{height}x{width} images"):
        extract_features(nn.Flatten(), images.numpy(), "cpu", center_crop=min(height, width) + 1)


def test_padded_crop_views_are_torchvisions_random_crop_and_flip():
    """TS's training transform, RandomCrop(32, padding=4) + RandomHorizontalFlip(): per image, pad 4 with zeros,
    crop the image size at the drawn (top, left) in [0, 8], flip where drawn; the same whatever the batch size."""
    import torchvision.transforms.v2.functional as TF

    images = torch.randint(0, 256, (9, 10, 12, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    views = PaddedCropViews.draw(9, 4, torch.Generator().manual_seed(6))
    generator = torch.Generator().manual_seed(6)  # the documented draws: offsets, then flips
    offsets = torch.randint(0, 9, (9, 2), generator=generator)
    flips = torch.rand(9, generator=generator) < 0.5
    assert torch.equal(views.offsets, offsets) and torch.equal(views.flips, flips)
    features = extract_features(nn.Flatten(), images.numpy(), "cpu", batch_size=4, views=views)
    for b in range(9):
        top, left = offsets[b].tolist()
        expected = TF.crop(TF.pad(images[b].permute(2, 0, 1), [4], fill=0), top, left, 10, 12)
        expected = TF.horizontal_flip(expected) if flips[b] else expected
        assert torch.equal(features[b], (expected.float() / 255).flatten()), b
    assert torch.equal(extract_features(nn.Flatten(), images.numpy(), "cpu", batch_size=512, views=views), features)
    with pytest.raises(FastltError, match="views: drawn for 9 images, got 8"):
        extract_features(nn.Flatten(), images.numpy()[:8], "cpu", views=views)


def test_padded_crop_draws_cover_every_offset_and_flip_half():
    views = PaddedCropViews.draw(20_000, 4, torch.Generator().manual_seed(0))
    assert views.offsets.min() == 0 and views.offsets.max() == 8
    counts = torch.bincount(views.offsets.flatten(), minlength=9).float() / views.offsets.numel()
    assert torch.allclose(counts, torch.full((9,), 1 / 9), atol=0.01)
    assert abs(float(views.flips.float().mean()) - 0.5) < 0.01
    again = PaddedCropViews.draw(20_000, 4, torch.Generator().manual_seed(0))
    assert torch.equal(again.offsets, views.offsets) and torch.equal(again.flips, views.flips)
