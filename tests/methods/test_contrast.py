"""ContrastiveLoss: weights apply to the loss but not to BCL's per-sample losses; the schedule fills the buffer."""
import math

import torch

from fastlt.methods.contrast import ContrastiveLoss
from fastlt.objectives.infonce import info_nce


def embeddings():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(5, 6, generator=generator), torch.randn(5, 6, generator=generator)


def test_lotar_weights_the_mean_over_anchors_and_leave_per_sample_losses_unweighted():
    z1, z2 = embeddings()
    loss, per_sample = ContrastiveLoss("infonce", 0.2, sample_weights="lotar", lotar_sign=1.0)(z1, z2)
    plain_loss, plain_per_sample = info_nce(z1, z2, 0.2)
    d = (z1 - z2).norm(dim=1)
    w = 1 + (d - d.mean()) / (d.max() - d.min())
    per_anchor_sum = 2 * plain_per_sample  # the two anchors of each sample
    # mean over 2B anchors of CE_i * w_i, with w repeated for both halves
    torch.testing.assert_close(loss, (per_anchor_sum * w).sum() / 10, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loss, plain_loss)
    torch.testing.assert_close(per_sample, plain_per_sample)


def test_cosine_schedule_fills_the_temperature_buffer_each_epoch_and_constant_keeps_it():
    cosine = ContrastiveLoss("infonce", 0.2, "cosine", (0.1, 1.0, 200))
    buffer = cosine.temperature
    for epoch, tau in ((1, 0.1 + 0.45 * (1 + math.cos(math.pi / 200))), (200, 0.1)):
        cosine.set_epoch(epoch)
        assert cosine.temperature is buffer and abs(float(buffer) - tau) < 1e-6 and abs(cosine.value - tau) < 1e-12
    z1, z2 = embeddings()
    torch.testing.assert_close(cosine(z1, z2)[0], info_nce(z1, z2, 0.1)[0])
    constant = ContrastiveLoss("infonce", 0.2)
    constant.set_epoch(200)
    assert float(constant.temperature) == torch.tensor(0.2).item() and constant.value == 0.2
