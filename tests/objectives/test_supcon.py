"""SupCon (contrast mode all) against a loop over anchors written from the paper's formula."""
import pytest
import torch
import torch.nn.functional as F

from fastlt.errors import FastltError
from fastlt.objectives.infonce import info_nce_per_anchor
from fastlt.objectives.supcon import supcon_per_anchor, unsupervised_supcon_per_anchor


def inputs(seed: int = 0, batch: int = 6):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 5, generator=generator, dtype=torch.float64).requires_grad_(True),
            torch.randn(batch, 5, generator=generator, dtype=torch.float64).requires_grad_(True))


def loop_supcon(z1, z2, tau, same_group):
    """L_i = -(tau / 0.07) / |P(i)| sum_{p in P(i)} log(exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau)).

    same_group(i, j) says whether anchor j (0..2B-1, view-major order) is a positive of anchor i.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z.shape[0]
    losses = []
    for i in range(n):
        denominator = sum(torch.exp(z[i] @ z[a] / tau) for a in range(n) if a != i)
        positives = [p for p in range(n) if p != i and same_group(i, p)]
        terms = [torch.log(torch.exp(z[i] @ z[p] / tau) / denominator) for p in positives]
        losses.append(-(tau / 0.07) * sum(terms) / len(positives))
    return torch.stack(losses)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_supervised_supcon_equals_the_loop_in_value_and_gradient(tau):
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    z1, z2 = inputs(1)
    got = supcon_per_anchor(z1, z2, tau, labels)
    a1, a2 = inputs(1)
    both = labels.repeat(2)
    want = loop_supcon(a1, a2, tau, lambda i, j: bool(both[i] == both[j]))
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)  # the objective computes in float32
    for g, w in zip(torch.autograd.grad(got.mean(), (z1, z2)), torch.autograd.grad(want.mean(), (a1, a2))):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_unsupervised_variant_takes_the_same_image_as_the_only_positive_in_value_and_gradient():
    z1, z2 = inputs(2)
    got = unsupervised_supcon_per_anchor(z1, z2, 0.2, labels=torch.zeros(6, dtype=torch.long))  # labels unused
    a1, a2 = inputs(2)
    batch = z1.shape[0]
    want = loop_supcon(a1, a2, 0.2, lambda i, j: i % batch == j % batch)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    # Weighted per anchor (as LoTaR's weights and BCL's memory see them), so each anchor's gradient counts.
    weights = torch.rand(2 * batch, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got_grads = torch.autograd.grad((got * weights).sum(), (z1, z2))
    for g, w in zip(got_grads, torch.autograd.grad((want * weights).sum(), (a1, a2))):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, info_nce_per_anchor(z1, z2, 0.2) * 0.2 / 0.07)  # NT-Xent x tau / 0.07


def test_a_class_alone_in_the_batch_still_has_its_other_view():
    z1, z2 = inputs(3, batch=4)
    labels = torch.tensor([0, 1, 2, 3])  # every class once: supervised = unsupervised
    torch.testing.assert_close(supcon_per_anchor(z1, z2, 0.1, labels), unsupervised_supcon_per_anchor(z1, z2, 0.1))


def test_tensor_temperature_and_bf16_embeddings():
    z1, z2 = (z.detach().float() for z in inputs(4))
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    expected = supcon_per_anchor(z1, z2, 0.1, labels)
    torch.testing.assert_close(supcon_per_anchor(z1, z2, torch.tensor(0.1), labels), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = supcon_per_anchor(z1.bfloat16(), z2.bfloat16(), 0.1, labels)
    assert low.dtype == torch.float32 and torch.allclose(low, expected, atol=0.05)


def test_supervised_supcon_needs_labels():
    z1, z2 = inputs()
    with pytest.raises(FastltError, match="objective supcon: needs the batch's labels"):
        supcon_per_anchor(z1, z2, 0.1)
