"""BCL linear probe and the LinearSVC protocol against scikit-learn and a plain training loop."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.svm import LinearSVC

from fastlt.errors import FastltError
from fastlt.evaluate.linear import (
    LinearProbeConfig,
    balanced_subset,
    linear_svc_predict,
    predict_linear,
    train_linear_probe,
)


def digits_split():
    """scikit-learn's bundled 8x8 digits, raw pixels 0..16, stratified 75/25 split."""
    data = load_digits()
    return train_test_split(data.data, data.target, test_size=0.25, random_state=0, stratify=data.target)


def as_tensors(*arrays):
    return [torch.as_tensor(a, dtype=torch.float32 if a.dtype.kind == "f" else torch.long) for a in arrays]


def test_separable_gaussian_blobs():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16)) * 6
    labels = rng.integers(0, 4, size=800)
    points = centres[labels] + rng.normal(size=(800, 16))
    x, y = as_tensors(points, labels)
    probe = train_linear_probe(x[:600], y[:600], 4, LinearProbeConfig(epochs=50, batch_size=100))
    assert (predict_linear(probe, x[600:]) == y[600:]).float().mean() == 1.0


def test_agrees_with_regularised_logistic_regression_away_from_chance_and_100():
    """Overlapping classes (about 70% accuracy, chance 20%): the probe must land on scikit-learn's optimum.

    Adam's weight_decay wd adds wd * w to the gradient, i.e. minimises mean CE + wd/2 * |W|^2, which
    is LogisticRegression's objective with C = 1 / (wd * n) once the bias is penalised too: give
    scikit-learn a constant feature in place of its unpenalised intercept.
    """
    rng = np.random.default_rng(0)
    classes, dims, n_train = 5, 20, 2000
    centres = rng.normal(size=(classes, dims)) * 0.4
    labels = rng.integers(0, classes, size=3000)
    points = (centres[labels] + rng.normal(size=(3000, dims))).astype(np.float32)
    weight_decay = 0.03
    with_constant = np.hstack([points, np.ones((len(points), 1), np.float32)])
    reference = LogisticRegression(C=1 / (weight_decay * n_train), fit_intercept=False, max_iter=10_000, tol=1e-8)
    expected = reference.fit(with_constant[:n_train], labels[:n_train]).predict(with_constant[n_train:])
    x, y = as_tensors(points, labels)
    config = LinearProbeConfig(epochs=150, batch_size=500, lr=0.1, final_lr=1e-4, weight_decay=weight_decay)
    predicted = predict_linear(train_linear_probe(x[:n_train], y[:n_train], classes, config), x[n_train:]).numpy()
    truth = labels[n_train:]
    assert 0.6 < (expected == truth).mean() < 0.8
    assert abs((predicted == truth).mean() - (expected == truth).mean()) <= 0.005
    assert (predicted == expected).mean() >= 0.995


def plain_loop_probe(x, y, num_classes, config):
    """The obvious implementation: nn.Linear, fancy indexing, F.cross_entropy, Adam, lr set per epoch.

    Draws from its generator in the documented order (weight, bias, one permutation per epoch).
    """
    generator = torch.Generator().manual_seed(config.seed)
    bound = 1 / math.sqrt(x.shape[1])
    probe = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        probe.weight.copy_(torch.rand(probe.weight.shape, generator=generator) * 2 * bound - bound)
        probe.bias.copy_(torch.rand(probe.bias.shape, generator=generator) * 2 * bound - bound)
    optimizer = torch.optim.Adam(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for epoch in range(config.epochs):
        optimizer.param_groups[0]["lr"] = config.lr * (config.final_lr / config.lr) ** (epoch / (config.epochs - 1))
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            optimizer.zero_grad()
            F.cross_entropy(probe(x[batch]), y[batch]).backward()
            optimizer.step()
    return probe


def test_matches_plain_training_loop_with_partial_batches():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(53, 12, generator=generator)
    y = torch.randint(0, 5, (53,), generator=generator)
    config = LinearProbeConfig(epochs=6, batch_size=10, lr=0.05, final_lr=1e-3, weight_decay=1e-3, seed=7)
    probe = train_linear_probe(x, y, 5, config)
    reference = plain_loop_probe(x, y, 5, config)
    torch.testing.assert_close(probe.weight, reference.weight.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probe.bias, reference.bias.detach(), rtol=1e-4, atol=1e-5)


def test_deterministic_from_seed():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 8, generator=generator), torch.randint(0, 3, (300,), generator=generator)
    config = LinearProbeConfig(epochs=5, batch_size=64, seed=11)
    first, second = train_linear_probe(x, y, 3, config), train_linear_probe(x, y, 3, config)
    other = train_linear_probe(x, y, 3, LinearProbeConfig(epochs=5, batch_size=64, seed=12))
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert not torch.equal(first.weight, other.weight)


def test_lr_decays_exponentially_from_lr_to_final_lr(monkeypatch):
    used = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            used.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    config = LinearProbeConfig(epochs=5, batch_size=10, lr=1e-2, final_lr=1e-6)
    train_linear_probe(torch.randn(25, 4), torch.randint(0, 2, (25,)), 2, config)
    assert len(used) == 5 * 3  # 3 batches (10, 10, 5) per epoch
    per_epoch = used[::3]
    assert all(used[3 * e : 3 * e + 3] == [per_epoch[e]] * 3 for e in range(5))
    assert math.isclose(per_epoch[0], 1e-2) and math.isclose(per_epoch[-1], 1e-6)
    ratios = [b / a for a, b in zip(per_epoch, per_epoch[1:])]
    assert all(math.isclose(r, (1e-6 / 1e-2) ** (1 / 4)) for r in ratios)


def test_predict_linear_matches_numpy_argmax_in_chunks():
    generator = torch.Generator().manual_seed(0)
    probe = torch.nn.Linear(6, 4)
    x = torch.randn(37, 6, generator=generator)
    expected = np.argmax(x.numpy() @ probe.weight.detach().numpy().T + probe.bias.detach().numpy(), axis=1)
    predicted = predict_linear(probe, x, batch_size=5)
    assert predicted.dtype == torch.long
    np.testing.assert_array_equal(predicted.numpy(), expected)


def test_rejects_bad_inputs():
    with pytest.raises(FastltError, match="labels"):
        train_linear_probe(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), 3, LinearProbeConfig(epochs=1))
    with pytest.raises(FastltError, match="labels"):
        train_linear_probe(torch.randn(4, 3), torch.tensor([0, 1]), 3, LinearProbeConfig(epochs=1))
    with pytest.raises(FastltError, match="epochs"):
        LinearProbeConfig(epochs=0)


def test_balanced_subset_takes_smallest_count_from_each_class():
    labels = torch.tensor([0] * 30 + [1] * 7 + [2] * 12 + [4] * 9)  # class 3 absent
    subset = balanced_subset(labels, torch.Generator().manual_seed(0))
    assert len(set(subset.tolist())) == len(subset)
    np.testing.assert_array_equal(np.bincount(labels[subset].numpy(), minlength=5), [7, 7, 7, 0, 7])
    again = balanced_subset(labels, torch.Generator().manual_seed(0))
    other = balanced_subset(labels, torch.Generator().manual_seed(1))
    assert torch.equal(subset, again) and not torch.equal(subset.sort().values, other.sort().values)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_linear_svc_lt_and_fs_match_sklearn():
    x_train, x_test, y_train, y_test = digits_split()
    keep = np.concatenate([np.flatnonzero(y_train == c)[: 10 + 10 * c] for c in range(10)])  # long-tailed
    x_train, y_train = x_train[keep], y_train[keep]
    tx, ty, vx = as_tensors(x_train, y_train, x_test)

    lt = linear_svc_predict(tx, ty, vx, balanced=False, seed=3)
    expected_lt = LinearSVC(random_state=3).fit(unit_rows(x_train), y_train).predict(unit_rows(x_test))
    np.testing.assert_array_equal(lt.numpy(), expected_lt)

    fs = linear_svc_predict(tx, ty, vx, balanced=True, seed=3)
    chosen = balanced_subset(ty, torch.Generator().manual_seed(3)).numpy()
    assert np.bincount(y_train[chosen]).tolist() == [10] * 10
    expected_fs = LinearSVC(random_state=3).fit(unit_rows(x_train[chosen]), y_train[chosen]).predict(unit_rows(x_test))
    np.testing.assert_array_equal(fs.numpy(), expected_fs)
    assert (fs.numpy() == y_test).mean() > 0.8
