"""ContrastiveLoss: weights apply to the loss but not to BCL's per-sample losses; the schedule fills the buffer;
in several processes each rank computes only its own anchors' rows, and the ranks' gradients add up to one
process's."""
import math

import pytest
import torch

from fastlt.methods import contrast
from fastlt.methods.contrast import ContrastiveLoss
from fastlt.objectives import OBJECTIVES, flatnce, infonce, register_objective, supcon, takes_anchors
from fastlt.objectives.infonce import info_nce, info_nce_per_anchor, pair_logits


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


@pytest.mark.parametrize("name", ["infonce", "flatnce", "supcon", "supcon-unsupervised"])
def test_objectives_compute_only_the_anchors_they_are_given(name):
    """The rows ``anchors`` picks, and their gradients, are those rows of the whole computation."""
    objective = OBJECTIVES[name]
    generator = torch.Generator().manual_seed(2)
    z1, z2 = (torch.randn(6, 5, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(2))
    labels, anchors = torch.tensor([0, 1, 0, 2, 1, 0]), torch.tensor([4, 1, 9, 7, 11])
    mix = torch.rand(len(anchors), dtype=torch.float64, generator=generator)  # any loss built from the rows
    assert takes_anchors(objective)
    rows = objective(z1, z2, 0.2, labels, anchors=anchors)
    whole = objective(z1, z2, 0.2, labels)[anchors]
    torch.testing.assert_close(rows, whole)
    for got, want in zip(torch.autograd.grad((rows * mix).sum(), (z1, z2)),
                         torch.autograd.grad((whole * mix).sum(), (z1, z2))):
        torch.testing.assert_close(got, want)


def sliced_infonce(z1, z2, temperature, labels=None):
    """A plugin objective that knows nothing of anchors: computed in full, then sliced."""
    return info_nce_per_anchor(z1, z2, temperature, labels)


@pytest.mark.parametrize("objective, mode, weights, views", [
    ("infonce", "all", "none", 0), ("flatnce", "all", "lotar", 0), ("supcon", "one", "none", 2),
    ("supcon-unsupervised", "all", "none", 2), ("sliced", "one", "lotar", 0), ("supcon", "all", "lotar", 0)])
def test_each_rank_computes_its_own_anchors_and_the_ranks_together_give_the_one_process_gradient(
        objective, mode, weights, views, monkeypatch):
    """Three ranks with shares 3 + 2 + 2, in one process: the gather is the identity (every rank is handed the
    whole batch), the rank is faked. Rank r's logits are its anchors' rows only; the sum over the ranks of their
    gradients is N times the one-process gradient (DDP then averages); its per-sample losses are its samples'."""
    sizes, batch = (3, 2, 2), 7
    register_objective("sliced")(sliced_infonce)
    try:
        generator = torch.Generator().manual_seed(3)
        shape = (batch, views, 4) if views else (batch, 4)
        z1, z2 = (torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(2))
        labels = torch.tensor([0, 1, 0, 2, 1, 0, 2])
        loss_module = ContrastiveLoss(objective, 0.2, sample_weights=weights, contrast_mode=mode)
        loss, per_sample = loss_module(z1, z2, labels)
        gradient = torch.autograd.grad(loss, (z1, z2))
        logits_shapes = []

        def recorded_pair_logits(*args):
            logits, positives = pair_logits(*args)
            logits_shapes.append(logits.shape)
            return logits, positives

        for module in (infonce, flatnce, supcon):
            monkeypatch.setattr(module, "pair_logits", recorded_pair_logits)
        monkeypatch.setattr(contrast, "gather_rows", lambda rows, sizes: rows)
        loss_module.shard_sizes = sizes
        summed, first = [torch.zeros_like(z1), torch.zeros_like(z2)], 0
        anchors_per_sample = (2 if mode == "all" else 1) * max(views, 1)
        for rank, count in enumerate(sizes):
            monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)
            rank_loss, rank_per_sample = loss_module(z1, z2, labels)
            for total, part in zip(summed, torch.autograd.grad(rank_loss, (z1, z2))):
                total += part
            torch.testing.assert_close(rank_per_sample, per_sample[first:first + count], rtol=1e-5, atol=1e-6)
            rows = batch * 2 * max(views, 1)
            assert logits_shapes[-1] == ((anchors_per_sample * count, rows) if objective != "sliced" else (rows, rows))
            first += count
        for total, want in zip(summed, gradient):
            torch.testing.assert_close(total / len(sizes), want, rtol=1e-5, atol=1e-6)  # float32 logits
    finally:
        OBJECTIVES.pop("sliced")
