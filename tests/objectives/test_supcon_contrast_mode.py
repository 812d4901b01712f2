"""SupCon's contrast_mode 'one' (method.contrast_mode = "one"): a transcription of SupContrast's SupConLoss
(losses.py:49-96) run on features [B, 2, D], against fastlt's loss module: values, gradients, and what BCL's
per-sample memory and LoTaR's weights see."""
import pytest
import torch
import torch.nn.functional as F

from fastlt.methods.contrast import ContrastiveLoss

TAU = 0.1


def supcontrast_loss(features: torch.Tensor, labels: torch.Tensor | None, mode: str) -> torch.Tensor:
    """SupConLoss.forward as written, per anchor: contrast_feature = cat(unbind(features, 1)); anchors = features[:, 0]
    (mode one) or the contrast features (all); mask = labels' equality (or the identity), tiled, the self-contrast
    removed; -(tau / 0.07) mean over positives of log_prob; the [anchor_count, B] losses returned unreduced."""
    batch = features.shape[0]
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor, anchor_count = (features[:, 0], 1) if mode == "one" else (contrast, features.shape[1])
    logits = anchor @ contrast.T / TAU
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = torch.eye(batch, dtype=torch.float64) if labels is None else (labels[:, None] == labels[None, :]).double()
    mask = mask.repeat(anchor_count, features.shape[1])
    logits_mask = torch.ones_like(mask)
    logits_mask[torch.arange(batch * anchor_count), torch.arange(batch * anchor_count)] = 0
    mask = mask * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True))
    per_anchor = -(TAU / 0.07) * (mask * log_prob).sum(1) / mask.sum(1)
    return per_anchor.view(anchor_count, batch)


def embeddings(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 5, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(2)]


@pytest.mark.parametrize("objective, labels", [("supcon", torch.tensor([0, 1, 0, 2, 1, 0])),
                                               ("supcon-unsupervised", None)])
@pytest.mark.parametrize("mode", ["one", "all"])
def test_contrast_modes_equal_supcontrasts_loss_in_value_and_gradient(objective, labels, mode):
    z1, z2 = embeddings(1)
    loss, per_sample = ContrastiveLoss(objective, TAU, contrast_mode=mode)(z1, z2, labels)
    a1, a2 = (z.detach().clone().requires_grad_(True) for z in (z1, z2))
    reference = supcontrast_loss(torch.stack([F.normalize(a1, dim=1), F.normalize(a2, dim=1)], dim=1), labels, mode)
    torch.testing.assert_close(loss.double(), reference.mean(), rtol=1e-5, atol=1e-6)
    for got, want in zip(torch.autograd.grad(loss, (z1, z2)), torch.autograd.grad(reference.mean(), (a1, a2))):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-7)
    # BCL's memory: a sample's loss is the mean of its anchors, in mode one its first view's alone
    torch.testing.assert_close(per_sample.double(), reference.detach().mean(0), rtol=1e-5, atol=1e-6)


def test_mode_one_takes_the_lotar_weights_of_its_anchors():
    z1, z2 = embeddings(2)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    weighted = ContrastiveLoss("supcon", TAU, sample_weights="lotar", lotar_sign=1.0, contrast_mode="one")
    loss, _ = weighted(z1, z2, labels)
    d = (z1 - z2).norm(dim=1).detach()
    weights = 1 + (d - d.mean()) / (d.max() - d.min())
    first = supcontrast_loss(torch.stack([F.normalize(z1, dim=1), F.normalize(z2, dim=1)], 1).detach(), labels, "one")
    torch.testing.assert_close(loss.detach().double(), (first[0] * weights).mean(), rtol=1e-5, atol=1e-6)
