"""FlatCLR's fine-tuning (fine_tune.py train_ft) against an independent loop: every parameter trained with a new fc
by SGD at a constant lr, the model never switched out of train mode, the best test epoch and the early stop."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fastlt.errors import FastltError
from fastlt.evaluate.finetune import FinetuneConfig, finetune
from fastlt.evaluate.linear import seeded_linear
from fastlt.models.resnet import build_resnet


def reference_train_ft(backbone, images, labels, test_images, test_labels, num_classes, epochs, lr, batch_size,
                       patience, seed, batch_norm="train", held_out=None):
    """fine_tune.py:12-101, independently: SGD(momentum 0.9) over the model's and the new fc's parameters, constant
    lr; after each epoch every test batch (in order) is scored, the model in train mode as train_ft leaves it (or
    in eval mode for ``batch_norm="eval"``); the first best epoch is kept; stop once ``patience`` epochs follow
    it. The fc's init and the batch order come from one generator seeded with ``seed`` (fastlt's draws)."""
    model = copy.deepcopy(backbone).train()
    generator = torch.Generator().manual_seed(seed)
    fc = seeded_linear(backbone.feature_dim, num_classes, generator)
    optimizer = torch.optim.SGD([*model.parameters(), *fc.parameters()], lr=lr, momentum=0.9, weight_decay=0.0)
    pixels = lambda x: x.permute(0, 3, 1, 2).float() / 255  # noqa: E731
    select_images, select_labels = held_out if held_out is not None else (test_images, test_labels)

    def score(x):
        model.train(batch_norm == "train")
        with torch.no_grad():
            out = torch.cat([fc(model(pixels(x[i:i + batch_size]))).argmax(1) for i in range(0, len(x), batch_size)])
        model.train()
        return out

    best_accuracy, best_epoch, best_predictions, history = 0.0, 0, None, []
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            loss = F.cross_entropy(fc(model(pixels(images[batch]))), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        selected = score(select_images)
        accuracy = 100.0 * (selected == select_labels).float().mean().item()
        history.append(accuracy)
        if best_accuracy < accuracy or best_predictions is None:
            best_accuracy, best_epoch = accuracy, epoch
            best_predictions = selected if held_out is None else score(test_images)
        if patience and epoch - best_epoch >= patience:
            break
    return best_epoch, best_predictions, history


def data(seed: int):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (24,), generator=generator)
    images = torch.randint(0, 150, (24, 8, 8, 3), generator=generator)
    images[torch.arange(24), :, :, labels] += 100  # the class brightens one channel
    return images.to(torch.uint8), labels


@pytest.mark.parametrize("batch_norm, select, patience", [("train", "test", 2), ("eval", "test", 0),
                                                          ("train", "held-out", 1)])
def test_finetuning_equals_train_ft(batch_norm, select, patience):
    torch.manual_seed(0)
    backbone = build_resnet("resnet18", width=8)  # 4 channels met a oneDNN AVX2 kernel that corrupts memory
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    images, labels = data(1)
    test_images, test_labels = data(2)
    held_out = data(3) if select == "held-out" else None
    config = FinetuneConfig(epochs=5, lr=0.05, batch_size=10, patience=patience, batch_norm=batch_norm, seed=7)
    result = finetune(backbone, images, labels, test_images, test_labels, backbone.feature_dim, 3, config, held_out)
    best_epoch, predictions, history = reference_train_ft(backbone, images, labels, test_images, test_labels, 3, 5,
                                                          0.05, 10, patience, 7, batch_norm, held_out)
    assert result.selection_accuracy == pytest.approx(history, abs=1e-4)
    assert result.best_epoch == best_epoch and torch.equal(result.predictions, predictions)
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())  # a copy was trained
    assert len(set(history)) > 1


def test_the_early_stop_ends_training_once_patience_epochs_follow_the_best():
    torch.manual_seed(0)
    backbone = build_resnet("resnet18", width=8)  # 4 channels met a oneDNN AVX2 kernel that corrupts memory
    images, labels = data(1)
    test_images, test_labels = data(2)
    config = FinetuneConfig(epochs=12, lr=3.0, batch_size=24, patience=1, seed=3)
    result = finetune(backbone, images, labels, test_images, test_labels, backbone.feature_dim, 3, config)
    history = result.selection_accuracy
    assert len(history) < 12 and len(history) - result.best_epoch == 1
    assert history[-1] <= max(history[:-1]) and result.best_epoch == 1 + history.index(max(history))


def test_bad_settings_are_one_line():
    with pytest.raises(FastltError, match="batch_norm must be one of"):
        FinetuneConfig(batch_norm="frozen")
    with pytest.raises(FastltError, match="patience must be >= 0, got -1"):
        FinetuneConfig(patience=-1)
    with pytest.raises(FastltError, match="finetune: epochs and batch size must be >= 1, got 0 / 4096"):
        FinetuneConfig(epochs=0)
