"""Linear classifiers on frozen features: the BCL probe (Adam, exponential decay) and LinearSVC.

The probe follows docs/evaluation.md (BCL's eval_cifar.py): nn.Linear(D, C) with bias, Adam
with lr 1e-2 decayed per epoch by ExponentialLR's gamma = (1e-6 / 1e-2)^(1/500) over 500
epochs, weight decay 5e-6 (Adam's coupled L2), batches of 1000 in a fresh shuffled order
every epoch, features used as they are. The feature matrix stays resident on its device and
every batch is an index into it, so training is a short loop of small matrix products with
no host synchronisation.

LinearSVC on L2-normalised features is the Temperature-Schedules protocol, as its notebooks
run it: "LT" fits on all of the long-tailed split's features, "FS" on a class-balanced
subsample drawn by the notebooks' numpy code (``ts_few_shot_subset``) or on a given list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlt.errors import FastltError
from fastlt.progress import Advance, unwatched

if TYPE_CHECKING:
    from sklearn.svm import LinearSVC

TS_SEED = 42  # the TS notebooks' np.random.seed and LinearSVC random_state


@dataclass(frozen=True)
class ClassifierTraining:
    """What every protocol's classifier training is set by: its length, learning rate, batch size and seed. Each
    protocol's config gives them its reference's defaults and adds its own settings."""

    epochs: int
    lr: float
    batch_size: int
    seed: int = 0

    protocol: ClassVar[str] = "probe"  # the name an error starts with

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise FastltError(f"{self.protocol}: epochs and batch size must be >= 1, got {self.epochs} / "
                              f"{self.batch_size}")


@dataclass(frozen=True)
class SgdClassifierTraining(ClassifierTraining):
    """Classifier training by SGD with momentum, as SupCon's, SelfCon's and FlatCLR's code does it (0.9, no weight
    decay, unless a protocol says otherwise)."""

    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass(frozen=True)
class LinearProbeConfig(ClassifierTraining):
    """The BCL linear-probe protocol; defaults are the published ones."""

    protocol: ClassVar[str] = "linear probe"
    final_lr: float = 1e-6  # reached one scheduler step after the last epoch
    weight_decay: float = 5e-6
    epochs: int = 500
    lr: float = 1e-2
    batch_size: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.lr > 0 and self.final_lr > 0):
            raise FastltError(f"linear probe lr/final_lr: must be > 0, got {self.lr} / {self.final_lr}")
        if self.weight_decay < 0:
            raise FastltError(f"linear probe weight_decay: must be >= 0, got {self.weight_decay}")


def probe_lr(epoch: int, config: LinearProbeConfig) -> float:
    """Learning rate of 0-based ``epoch``: lr * gamma ** epoch with gamma = (final_lr / lr) ** (1 / epochs).

    BCL's eval_cifar.py steps an ExponentialLR with that gamma after each epoch, so the first
    epoch runs at ``lr`` and the last at final_lr / gamma (1.019e-6 for the published 500
    epochs); final_lr itself would be the lr of an epoch after the last.
    """
    gamma = (config.final_lr / config.lr) ** (1 / config.epochs)
    return config.lr * gamma**epoch


def _check_features_labels(features: Tensor, labels: Tensor, num_classes: int) -> None:
    """Shapes and label range, checked once up front (one host sync) rather than failing deep inside."""
    if features.ndim != 2 or not features.is_floating_point():
        raise FastltError(f"features: expected float [N, D], got {features.dtype} {tuple(features.shape)}")
    if labels.shape != (len(features),):
        raise FastltError(f"labels: expected shape ({len(features)},) to match the features, got {tuple(labels.shape)}")
    if len(labels) == 0:
        raise FastltError("features: no training samples")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise FastltError(f"labels: values must lie in [0, {num_classes}), got [{low}, {high}]")


def seeded_linear(dim: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear(dim, num_classes) with its default distribution, U(-1/sqrt(dim), 1/sqrt(dim)), drawn from ``generator``
    (on the generator's device), so a probe's initialisation depends on its seed alone."""
    device = generator.device
    probe = nn.utils.skip_init(nn.Linear, dim, num_classes, device=device)
    bound = dim**-0.5
    with torch.no_grad():
        for parameter in (probe.weight, probe.bias):
            parameter.copy_(torch.rand(parameter.shape, generator=generator, device=device) * (2 * bound) - bound)
    return probe


def train_linear_probe(features: Tensor, labels: Tensor, num_classes: int, config: LinearProbeConfig,
                       after_epoch: Advance = unwatched) -> nn.Linear:
    """Fit nn.Linear(D, num_classes) on frozen features with the BCL protocol; returned in eval mode, frozen.

    Randomness (initialisation and the per-epoch shuffles) comes only from a
    torch.Generator seeded with ``config.seed`` on the features' device, so the same
    inputs and seed give the same probe. The initialisation is nn.Linear's default
    distribution, U(-1/sqrt(D), 1/sqrt(D)) for weight and bias, drawn from that generator.
    The last batch of an epoch is smaller when N is not a multiple of the batch size
    (every sample is seen once per epoch, as in the reference). ``after_epoch`` runs after each epoch
    (linear-eval's progress line).
    """
    _check_features_labels(features, labels, num_classes)
    device = features.device
    features = features.detach().float()
    labels = labels.to(device=device, dtype=torch.long)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    num_samples, dim = features.shape

    probe = seeded_linear(dim, num_classes, generator)
    optimizer = torch.optim.Adam(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    for epoch in range(config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = probe_lr(epoch, config)
        order = torch.randperm(num_samples, generator=generator, device=device)
        for batch in order.split(config.batch_size):
            # index_select and class-major logits [C, B] (cross-entropy over dim 1 of
            # [1, C, B]) measured 1.5-2x faster on CPU than features[batch] and probe(x).
            batch_features = features.index_select(0, batch)
            logits = torch.addmm(probe.bias.unsqueeze(1), probe.weight, batch_features.t())
            loss = F.cross_entropy(logits.unsqueeze(0), labels.index_select(0, batch).unsqueeze(0))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        after_epoch()
    return probe.eval().requires_grad_(False)


def predict_linear(probe: nn.Linear, features: Tensor, batch_size: int = 4096) -> Tensor:
    """Predicted class ids (int64, on the features' device), batched to bound the logits' memory."""
    with torch.no_grad():
        return torch.cat([probe(chunk.float()).argmax(dim=1) for chunk in features.split(batch_size)])


def ts_few_shot_subset(labels: np.ndarray, num_classes: int, seed: int = TS_SEED) -> np.ndarray:
    """Positions (into ``labels``) of the TS notebooks' FS subsample, in the order they fit the SVM.

    The notebooks' code: n = the smallest class count (``Counter(...).most_common()[-1]``),
    ``np.random.seed(42)``, then for each class id in turn its positions (``np.where``) shuffled
    by ``np.random.shuffle`` and the first n kept, class after class. A local RandomState(seed)
    draws the same numbers without touching numpy's global state. The subset depends on the
    order of ``labels`` (the features' order); the loop runs over classes, not samples.
    """
    counts = np.bincount(labels, minlength=num_classes)
    smallest = counts[counts > 0].min()
    rng = np.random.RandomState(seed)
    chosen = []
    for label in range(num_classes):
        positions = np.flatnonzero(labels == label)
        rng.shuffle(positions)
        chosen.append(positions[:smallest])
    return np.concatenate(chosen)


def ts_linear_svc(seed: int = TS_SEED) -> LinearSVC:
    """scikit-learn's LinearSVC as the TS notebooks ran it: ``LinearSVC(random_state=42)`` under the 2022
    defaults, every one pinned, among them dual=True (the liblinear dual solver; since scikit-learn 1.5
    the default 'auto' takes the primal one when there are more samples than features)."""
    from sklearn.svm import LinearSVC  # scikit-learn is only needed for this protocol

    return LinearSVC(penalty="l2", loss="squared_hinge", dual=True, tol=1e-4, C=1.0, multi_class="ovr",
                     fit_intercept=True, intercept_scaling=1, class_weight=None, verbose=0, random_state=seed,
                     max_iter=1000)


def linear_svc_predict(train_features: Tensor, train_labels: Tensor, test_features: Tensor,
                       seed: int = TS_SEED) -> Tensor:
    """Temperature-Schedules protocol: ``ts_linear_svc`` fitted on the L2-normalised training features in their
    order (liblinear's result depends on it), predicting the L2-normalised test features.

    It runs on the CPU; predictions come back on the test features' device.
    """
    svc = ts_linear_svc(seed)
    svc.fit(F.normalize(train_features.float(), dim=1).cpu().numpy(), train_labels.cpu().numpy())
    predictions = svc.predict(F.normalize(test_features.float(), dim=1).cpu().numpy())
    return torch.as_tensor(predictions, dtype=torch.long, device=test_features.device)
