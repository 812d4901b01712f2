"""InfoNCE against a direct, per-anchor transcription of the NT-Xent formula."""
import math

import torch

from fastlt.objectives.infonce import info_nce


def nt_xent_by_hand(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> list[float]:
    """l_i = -log(exp(s_ip) / (exp(s_ip) + sum_{j not in {i, p}} exp(s_ij))), one anchor at a time."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = z.shape[0]
    batch = n // 2
    losses = []
    for i in range(n):
        p = (i + batch) % n
        s = [float(z[i] @ z[j]) / tau for j in range(n)]
        numerator = math.exp(s[p])
        denominator = numerator + sum(math.exp(s[j]) for j in range(n) if j not in (i, p))
        losses.append(-math.log(numerator / denominator))
    return losses


def test_matches_formula_per_anchor_and_per_sample():
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=generator)
    z2 = torch.randn(6, 5, generator=generator)
    expected = nt_xent_by_hand(z1, z2, tau=0.2)
    mean, per_sample = info_nce(z1, z2, 0.2)
    assert math.isclose(float(mean), sum(expected) / len(expected), rel_tol=1e-5)
    by_sample = [(expected[i] + expected[i + 6]) / 2 for i in range(6)]
    assert torch.allclose(per_sample.double(), torch.tensor(by_sample, dtype=torch.float64), rtol=1e-5)


def test_tensor_temperature_equals_float_and_scale_invariance():
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    a, _ = info_nce(z1, z2, 0.5)
    b, _ = info_nce(z1 * 3.0, z2 * 7.0, torch.tensor(0.5))  # embeddings are L2-normalised first
    assert torch.allclose(a, b, atol=1e-6)


def test_identical_views_give_lower_loss_than_random_pairs():
    z = torch.randn(16, 32)
    aligned, _ = info_nce(z, z + 0.01 * torch.randn_like(z), 0.1)
    random_pairs, _ = info_nce(z, torch.randn(16, 32), 0.1)
    assert aligned < random_pairs
    assert aligned < 0.1


def test_gradient_flows_and_bf16_inputs_give_float32_loss():
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8).bfloat16()
    loss, per_sample = info_nce(z1, z2, 0.2)
    assert loss.dtype == torch.float32 and per_sample.shape == (4,)
    loss.backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0


def test_bf16_autocast_leaves_per_sample_losses_at_fp32_precision():
    """Under bf16 autocast the logits must not be rounded to bf16 (about 0.004 / tau each)."""
    generator = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(64, 32, generator=generator), torch.randn(64, 32, generator=generator)
    _, expected = info_nce(z1, z2, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, per_sample = info_nce(z1, z2, 0.1)
        rounded = torch.cat([z1, z2]) @ torch.cat([z1, z2]).T  # what autocast does to an unguarded matmul
    assert rounded.dtype == torch.bfloat16  # the guard is needed: autocast is really on here
    assert per_sample.dtype == torch.float32
    torch.testing.assert_close(per_sample, expected, rtol=0, atol=1e-5)
