"""SupCon's / SelfCon's linear classifiers (main_linear.py of each): the lr steps, the views, an independent SGD loop
for two classifiers and their ensemble, each row's best test epoch, and a frozen encoder."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastlt.errors import FastltError
from fastlt.evaluate.linear import seeded_linear
from fastlt.evaluate.supcon_probe import SupConProbeConfig, train_linear_classifiers


def adjust_learning_rate(lr: float, decay_epochs: list[int], rate: float, epoch: int) -> float:
    """SupContrast util.py adjust_learning_rate without --cosine, transcribed."""
    steps = np.sum(epoch > np.asarray(decay_epochs))
    return lr * (rate**steps) if steps > 0 else lr


@pytest.mark.parametrize("decay_epochs, rate", [((60, 80), 0.1), ((60, 75, 90), 0.2), ((), 0.1)])
def test_lr_steps_are_util_adjust_learning_rate(decay_epochs, rate):
    config = SupConProbeConfig(lr=3.0, decay_epochs=decay_epochs, decay_rate=rate)
    for epoch in range(1, 101):
        assert config.lr_at(epoch) == pytest.approx(adjust_learning_rate(3.0, list(decay_epochs), rate, epoch))
    assert SupConProbeConfig().lr_at(60) == 3.0 and SupConProbeConfig().lr_at(61) == pytest.approx(0.3)


class ColourExits(nn.Module):
    """Two "exits" of a batch-normed mean colour: any crop, resize or flip of a one-colour image keeps them."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(3)
        self.norm.running_mean.fill_(0.5)
        self.norm.running_var.fill_(0.04)
        self.mix = nn.Linear(3, 2)

    def forward(self, x):
        colour = self.norm(x.mean(dim=(2, 3)))
        return torch.cat([colour, self.mix(colour)], dim=1)  # widths 3 and 2


def one_colour_images(count: int, seed: int):
    """uint8 NHWC images of one colour each; the class (0, 1, 2) raises one channel, by a random amount."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (count,), generator=generator)
    colour = torch.randint(40, 140, (count, 3), generator=generator)
    colour[torch.arange(count), labels] += torch.randint(0, 90, (count,), generator=generator)
    return colour[:, None, None, :].expand(count, 8, 8, 3).to(torch.uint8).contiguous(), labels


def test_two_classifiers_and_their_ensemble_equal_an_independent_sgd_loop():
    images, labels = one_colour_images(40, 0)
    test_images, test_labels = one_colour_images(60, 1)
    encoder = ColourExits().train()  # train mode on purpose: the encoder must be frozen in eval mode
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    with torch.no_grad():
        features = encoder.eval()(images.permute(0, 3, 1, 2).float() / 255)
        test_features = encoder(test_images.permute(0, 3, 1, 2).float() / 255)
    encoder.train()
    config = SupConProbeConfig(epochs=8, lr=2.0, batch_size=64, decay_epochs=(3, 6), decay_rate=0.2, size=6, seed=4)
    results = train_linear_classifiers(encoder, images, labels, test_features, test_labels, {"a": 3, "b": 2}, 3,
                                       config, ensemble="both")
    assert encoder.training and all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())

    # Independent: each classifier nn.Linear's default init (drawn in order from the seed), SGD momentum 0.9 on its
    # block of the (view-invariant) features, lr x0.2 after epochs 3 and 6, tested after every epoch; the ensemble
    # averages the two classifiers' logits; each row keeps its first best epoch.
    generator = torch.Generator().manual_seed(4)
    classifiers = [seeded_linear(3, 3, generator), seeded_linear(2, 3, generator)]
    optimizers = [torch.optim.SGD(c.parameters(), lr=2.0, momentum=0.9) for c in classifiers]
    blocks, test_blocks = features.split([3, 2], dim=1), test_features.split([3, 2], dim=1)
    history = {"a": [], "b": [], "both": []}
    predictions = {name: [] for name in history}
    for epoch in range(1, 9):
        for classifier, optimizer, block in zip(classifiers, optimizers, blocks):
            for group in optimizer.param_groups:
                group["lr"] = adjust_learning_rate(2.0, [3, 6], 0.2, epoch)
            loss = F.cross_entropy(classifier(block), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = [c(block) for c, block in zip(classifiers, test_blocks)]
            for name, scores in zip(history, [*logits, (logits[0] + logits[1]) / 2]):
                predictions[name].append(scores.argmax(1))
                history[name].append(100.0 * (scores.argmax(1) == test_labels).float().mean().item())
    for name in history:
        best = max(range(8), key=lambda e: (history[name][e], -e))
        assert results[name].test_accuracy == pytest.approx(history[name], abs=1e-4)
        assert results[name].best_epoch == best + 1
        assert torch.equal(results[name].predictions, predictions[name][best])
    assert len(set(history["a"])) > 1  # the epochs differ, so the best one is chosen


def test_classifiers_learn_from_augmented_views_and_are_seeded():
    images, labels = one_colour_images(90, 2)
    test_images, test_labels = one_colour_images(60, 3)
    encoder = ColourExits().eval()
    with torch.no_grad():
        test_features = encoder(test_images.permute(0, 3, 1, 2).float() / 255)
    config = SupConProbeConfig(epochs=5, lr=1.0, batch_size=32, decay_epochs=(4,), size=8, seed=1)
    first = train_linear_classifiers(encoder, images, labels, test_features, test_labels, {"a": 3, "b": 2}, 3, config)
    again = train_linear_classifiers(encoder, images, labels, test_features, test_labels, {"a": 3, "b": 2}, 3, config)
    assert max(first["a"].test_accuracy) > 60.0 and set(first) == {"a", "b"}  # chance: 33%
    assert first["a"].test_accuracy == again["a"].test_accuracy
    with pytest.raises(FastltError, match="the heads take 4 features, the encoder gives 5"):
        train_linear_classifiers(encoder, images, labels, test_features, test_labels, {"a": 4}, 3, config)
    with pytest.raises(FastltError, match="uint8"):
        train_linear_classifiers(encoder, images.float(), labels, test_features, test_labels, {"a": 5}, 3, config)


def test_training_views_are_torchvisions_random_resized_crop_at_scale_0_2_and_flip():
    import torchvision.transforms.v2.functional as TF

    from fastlt.augment.views import sample_resized_crop_boxes
    from fastlt.evaluate.probe_views import resized_crop_views

    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    views = resized_crop_views(images, torch.Generator().manual_seed(3), 32, (0.2, 1.0))
    assert views.shape == (6, 3, 32, 32) and views.is_contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(3)  # the same draws, in the same order: boxes, then flips
    boxes = sample_resized_crop_boxes(6, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), generator)
    flips = torch.rand(6, generator=generator) < 0.5
    assert (boxes[:, 2] * boxes[:, 3]).min() >= 0.2 * 32 * 32 * 0.9  # scale 0.2.. (rounded box sides)
    for b, (top, left, height, width) in enumerate(boxes.tolist()):
        expected = TF.resized_crop(images[b].float() / 255, top, left, height, width, [32, 32],
                                   TF.InterpolationMode.BILINEAR, antialias=True).clamp(0, 1)
        expected = TF.horizontal_flip(expected) if flips[b] else expected
        torch.testing.assert_close(views[b], expected, atol=1e-5, rtol=0)
