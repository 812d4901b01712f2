"""LoTaR's weights against their formula (both signs); the cosine temperature at the reference epochs."""
import math

import pytest
import torch

from fastlt.objectives.temperature import cosine_temperature
from fastlt.objectives.weights import lotar_weights


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_lotar_weights_follow_the_formula_and_keep_their_gradient(sign):
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(7, 4, generator=generator, requires_grad=True)
    z2 = torch.randn(7, 4, generator=generator)
    distances = [math.dist(a.tolist(), b.tolist()) for a, b in zip(z1, z2)]  # raw outputs, not normalised
    mean, spread = sum(distances) / 7, max(distances) - min(distances)
    expected = [1 + sign * (d - mean) / spread for d in distances]
    weights = lotar_weights(z1, z2, sign)
    assert weights.tolist() == pytest.approx(expected, rel=1e-5)
    assert (weights[distances.index(max(distances))] > 1) == (sign > 0)
    weights.sum().backward()  # not detached: the reference lets the gradient through
    assert z1.grad is not None and z1.grad.abs().sum() > 0


def test_the_default_sign_is_the_codes():
    """andrew15818/SimCLR train.py:81: w = 1 - (d - mean d) / (max d - min d), written out here."""
    from fastlt.recipe import MethodConfig

    z1 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 4.0]])  # distances 1, 2, 4: mean 7/3, spread 3
    expected = [1 - (d - 7 / 3) / 3 for d in (1.0, 2.0, 4.0)]
    assert lotar_weights(z1, z2).tolist() == pytest.approx(expected)
    assert MethodConfig().lotar_sign == -1.0


@pytest.mark.parametrize("epoch, expected", [
    (1, 0.1 + 0.45 * (1 + math.cos(math.pi / 200))),  # just below tau_max
    (200, 0.1),  # t_max: the minimum
    (400, 1.0),  # 2 t_max: back at the maximum (period 400 epochs)
    (600, 0.1),  # not clamped: the next cycle
])
def test_cosine_temperature_of_the_reference_setting(epoch, expected):
    assert cosine_temperature(epoch, 0.1, 1.0, 200) == pytest.approx(expected, abs=1e-12)
