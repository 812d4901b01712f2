"""BCL's memory and weights against direct transcriptions of docs/bcl.md."""
import numpy as np
import torch

from fastlt.methods.boost import MemorisationBoost


def test_momentum_update_matches_the_recurrence():
    rng = np.random.default_rng(0)
    n, beta, epochs = 12, 0.97, 4
    boost = MemorisationBoost(n, "bcl-i", beta)
    expected = np.zeros(n)
    for epoch in range(1, epochs + 1):
        losses = rng.uniform(0, 5, n)
        order = rng.permutation(n)
        for batch in np.array_split(order, 3):
            boost.observe(torch.from_numpy(batch), torch.from_numpy(losses[batch]).float())
        expected = losses if epoch == 1 else (1 - beta) * losses + beta * expected
    assert np.allclose(boost.momentum_loss.numpy(), expected, atol=1e-5)


def test_end_of_epoch_weights_match_the_formula():
    rng = np.random.default_rng(1)
    n = 50
    boost = MemorisationBoost(n, "bcl-i")
    losses = rng.gamma(2.0, 1.0, n)
    boost.observe(torch.arange(n), torch.from_numpy(losses).float())
    assert torch.all(boost.weights == 0)  # epoch 1 runs with w = 0
    stats = boost.end_epoch()
    z = (losses - losses.mean()) / losses.std(ddof=1)
    expected = z / np.abs(z).max() / 2 + 0.5
    assert np.allclose(boost.weights.numpy(), expected, atol=1e-5)
    assert boost.weights.min() >= 0 and boost.weights.max() <= 1
    assert abs(stats["weight_mean"] - expected.mean()) < 1e-5
    assert abs(stats["weight_q50"] - np.quantile(expected, 0.5)) < 1e-5


def test_only_visited_samples_enter_the_statistics_and_groups_are_reported():
    n = 10
    groups = torch.tensor([0, 0, 1, 1, 2, 2, -1, -1, -1, -1])
    boost = MemorisationBoost(n, "bcl-i", sample_groups=groups)
    visited = torch.arange(6)
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 8.0, 9.0])
    boost.observe(visited, losses)
    stats = boost.end_epoch()
    z = (losses.numpy() - losses.numpy().mean()) / losses.numpy().std(ddof=1)
    expected = z / np.abs(z).max() / 2 + 0.5
    assert np.allclose(boost.weights[:6].numpy(), expected, atol=1e-6)
    assert torch.all(boost.weights[6:] == 0)
    assert abs(stats["weight_mean_few"] - expected[4:6].mean()) < 1e-5
    assert stats["weight_mean_few"] > stats["weight_mean_many"]


def test_magnitude_mappings():
    n = 1000
    weights = torch.linspace(0, 1, n)
    bcl_i = MemorisationBoost(n, "bcl-i")
    bcl_i.weights.copy_(weights)
    generator = torch.Generator().manual_seed(0)
    strength = bcl_i.strengths(torch.arange(n), generator)
    assert torch.allclose(strength[:, 0], weights) and torch.allclose(strength[:, 1], 10 + 20 * weights)
    bcl_d = MemorisationBoost(n, "bcl-d")
    bcl_d.weights.copy_(weights)
    strength = bcl_d.strengths(torch.arange(n), generator)
    shared = (strength[:, 1] - 5) / (25 * weights.clamp_min(1e-9))
    assert torch.all(strength[:, 1] >= 5) and torch.all(strength[:, 1] <= 30)
    assert 0.0 <= shared[1:].min() and shared[1:].max() <= 1.0 and 0.4 < shared[1:].mean() < 0.6
    assert bcl_i.stage.randaugment.num_ops == 1 and bcl_d.stage.randaugment.num_ops == 2
