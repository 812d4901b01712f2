"""FlatNCE against InfoNCE (value) and against the softmax-over-negatives expression of its gradient."""
import torch
import torch.nn.functional as F

from fastlt.objectives.flatnce import flat_nce_per_anchor
from fastlt.objectives.infonce import info_nce_per_anchor


def inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(6, 5, generator=generator, dtype=torch.float64).requires_grad_(True),
            torch.randn(6, 5, generator=generator, dtype=torch.float64).requires_grad_(True))


def softmax_over_negatives_surrogate(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """mean_i sum_j sg(softmax_j(l_i)) l_ij, l_ij = (s_ij - s_ip) / tau, one anchor at a time in float64:
    its gradient is the one FlatNCE's paper writes down."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n, batch = z.shape[0], z.shape[0] // 2
    total = z.new_zeros(())
    for i in range(n):
        p = (i + batch) % n
        l = torch.stack([(z[i] @ z[j] - z[i] @ z[p]) / tau for j in range(n) if j not in (i, p)])
        total = total + (torch.softmax(l, dim=0).detach() * l).sum()
    return total / n


def test_value_equals_infonce_per_anchor():
    z1, z2 = inputs()
    torch.testing.assert_close(flat_nce_per_anchor(z1, z2, 0.1), info_nce_per_anchor(z1, z2, 0.1),
                               rtol=1e-5, atol=1e-5)


def test_gradient_is_the_softmax_over_negatives_expression_not_infonces():
    for tau in (0.1, 0.5):
        z1, z2 = inputs(1)
        flat = torch.autograd.grad(flat_nce_per_anchor(z1, z2, tau).mean(), (z1, z2))
        a1, a2 = inputs(1)
        expected = torch.autograd.grad(softmax_over_negatives_surrogate(a1, a2, tau), (a1, a2))
        for got, want in zip(flat, expected):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
        b1, b2 = inputs(1)
        infonce = torch.autograd.grad(info_nce_per_anchor(b1, b2, tau).mean(), (b1, b2))
        assert not torch.allclose(infonce[0].double(), flat[0].double(), atol=1e-4)
