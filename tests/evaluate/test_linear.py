"""BCL linear probe and the LinearSVC protocol against scikit-learn, a plain training loop driven as BCL's
eval_cifar.py drives it, and the Temperature-Schedules notebooks' code."""
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
    linear_svc_predict,
    predict_linear,
    probe_lr,
    train_linear_probe,
    ts_few_shot_subset,
    ts_linear_svc,
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
    """The obvious implementation: nn.Linear, fancy indexing, F.cross_entropy, Adam, and BCL's ExponentialLR
    (gamma = (lr_end / lr_start) ** (1 / epoch)) stepped after each epoch, as eval_cifar.py:eval_sgd does.

    Draws from its generator in the documented order (weight, bias, one permutation per epoch).
    """
    generator = torch.Generator().manual_seed(config.seed)
    bound = 1 / math.sqrt(x.shape[1])
    probe = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        probe.weight.copy_(torch.rand(probe.weight.shape, generator=generator) * 2 * bound - bound)
        probe.bias.copy_(torch.rand(probe.bias.shape, generator=generator) * 2 * bound - bound)
    optimizer = torch.optim.Adam(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=(config.final_lr / config.lr) **
                                                       (1 / config.epochs))
    for _ in range(config.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            optimizer.zero_grad()
            F.cross_entropy(probe(x[batch]), y[batch]).backward()
            optimizer.step()
        scheduler.step()
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


def bcl_exponential_lrs(epochs, lr_start=1e-2, lr_end=1e-6):
    """The lr of each epoch of BCL's eval_cifar.py:eval_sgd: ExponentialLR(gamma = (lr_end / lr_start) ** (1 / epoch)),
    scheduler.step() after the epoch's batches."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr_start)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=(lr_end / lr_start) ** (1 / epochs))
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_lr_is_bcls_exponential_lr_stepped_after_each_epoch(monkeypatch):
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
    np.testing.assert_allclose(per_epoch, bcl_exponential_lrs(5), rtol=1e-12)
    # The published 500 epochs: 1e-2 first, 1e-6 / gamma (1.019e-6, not 1e-6) last.
    published = bcl_exponential_lrs(500)
    np.testing.assert_allclose([probe_lr(e, LinearProbeConfig()) for e in range(500)], published, rtol=1e-12)
    assert published[0] == 1e-2 and published[-1] == pytest.approx(1.0186e-6, rel=1e-4)


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


def test_few_shot_subset_is_the_ts_notebooks(ts_notebook):
    rng = np.random.default_rng(4)
    labels = rng.permutation(np.repeat(np.arange(6), [40, 7, 25, 11, 30, 9]))  # long-tailed, shuffled order
    positions = np.arange(len(labels))
    expected_positions, expected_labels = ts_notebook.few_shot(positions, labels, 6)
    state = np.random.get_state()
    chosen = ts_few_shot_subset(labels, 6)
    assert all(np.array_equal(a, b) for a, b in zip(state, np.random.get_state()))  # numpy's global state untouched
    np.testing.assert_array_equal(chosen, expected_positions)  # the same samples, in the same order
    np.testing.assert_array_equal(labels[chosen], expected_labels)
    assert np.bincount(labels[chosen]).tolist() == [7] * 6
    assert not np.array_equal(ts_few_shot_subset(labels, 6, seed=43), chosen)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# scikit-learn's LinearSVC defaults of 2022 (releases 1.0-1.2, which the TS notebooks ran), from its documentation.
LINEAR_SVC_2022_DEFAULTS = {"penalty": "l2", "loss": "squared_hinge", "dual": True, "tol": 1e-4, "C": 1.0,
                            "multi_class": "ovr", "fit_intercept": True, "intercept_scaling": 1, "class_weight": None,
                            "verbose": 0, "random_state": None, "max_iter": 1000}


def test_linear_svc_is_the_notebooks_call_under_the_2022_defaults():
    notebook = LinearSVC(random_state=42, dual=True)  # the notebooks' LinearSVC(random_state=42), dual pinned
    assert ts_linear_svc().get_params() == notebook.get_params() == {**LINEAR_SVC_2022_DEFAULTS, "random_state": 42}

    x_train, x_test, y_train, y_test = digits_split()
    keep = np.concatenate([np.flatnonzero(y_train == c)[: 10 + 10 * c] for c in range(10)])  # long-tailed
    x_train, y_train = x_train[keep], y_train[keep]
    tx, ty, vx = as_tensors(x_train, y_train, x_test)
    predicted = linear_svc_predict(tx, ty, vx).numpy()
    fitted = LinearSVC(random_state=42, dual=True).fit(unit_rows(x_train), y_train)
    np.testing.assert_array_equal(predicted, fitted.predict(unit_rows(x_test)))
    assert (predicted == y_test).mean() > 0.8
    # Pinning dual matters: with more samples (550) than features (64) today's 'auto' solves the primal,
    # which lands elsewhere (within its tolerance: close here, not the same).
    primal = LinearSVC(random_state=42, dual=False).fit(unit_rows(x_train), y_train)
    assert np.abs(primal.coef_ - fitted.coef_).max() > 1e-4
