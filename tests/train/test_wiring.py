"""The wiring between the parts, seen from outside: what reaches BCL's memory, the views and the probe.

The parts are tested alone elsewhere; here spies on a real training run and a real
evaluation check that the trainer hands each part the right thing: BCL's memory gets the
store indices and the dense loss L1 (not SDCLR's pruned loss), BCL-D's U is shared by the
two views of a sample, the probe trains on the recipe's probe list, and the groups come
from the pretraining split.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fastlt.evaluate.protocol as protocol
from fastlt.data.splits import class_counts, class_groups
from fastlt.data.store import Store
from fastlt.errors import FastltError
from fastlt.methods.boost import BoostStage, MemorisationBoost
from fastlt.methods.contrast import ContrastiveLoss
from fastlt.recipe import recipe_from_dict
from fastlt.train.trainer import pretrain

ROOT = Path(__file__).resolve().parents[2]
SPLIT = ROOT / "splits" / "digits_lt" / "ratio10_seed1.npy"


def bcl_d_recipe(store: Path, out: Path):
    return recipe_from_dict({
        "data": {"store": str(store), "split": str(SPLIT)},
        "model": {"width": 8, "projector_hidden": 16, "projector_out": 8},
        "method": {"name": "bcl-d", "pruning_ratio": 0.5, "sdclr_forwards": 3},
        "optim": {"lr": 0.1, "warmup_epochs": 1},
        "train": {"epochs": 2, "batch_size": 100, "out_dir": str(out), "progress": False, "precision": "fp32",
                  "device": "cpu", "name": "wiring"},
    }, "test")


@pytest.fixture(scope="module")
def spied_bcl_d_run(digits_store, tmp_path_factory):
    """A 2-epoch BCL-D run with the memory's inputs, SDCLR's losses and the boost stage's inputs recorded.

    It runs the reference's iteration (``sdclr_forwards = 3``: two losses a step) so that which loss
    reaches the memory can be told; the default two-forward step has one loss, L, whose gradients are
    the two losses' (tests/methods/test_sdclr.py)."""
    observed, losses, strengths = [], [], []
    original_observe, original_loss, original_stage = MemorisationBoost.observe, ContrastiveLoss.forward, BoostStage.apply

    def observe(self, indices, per_sample):
        observed.append((indices.clone(), per_sample.clone()))
        return original_observe(self, indices, per_sample)

    def contrastive_loss(self, z1, z2, labels=None):
        loss, per_sample = original_loss(self, z1, z2, labels)
        if len(losses) % 2 == 1:  # SDCLR's pruned loss L2 (each step's second call): only the memory could see
            per_sample = per_sample + 1.0  # this mark, which sets L2's values apart from L1's equal ones
        losses.append(per_sample.detach().clone())
        return loss, per_sample

    def stage(self, images, draws, strength):
        strengths.append(strength.clone())
        return original_stage(self, images, draws, strength)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MemorisationBoost, "observe", observe)
        patch.setattr(ContrastiveLoss, "forward", contrastive_loss)
        patch.setattr(BoostStage, "apply", stage)
        pretrain(bcl_d_recipe(digits_store, tmp_path_factory.mktemp("wiring")))
    return observed, losses, strengths


def test_bcl_memory_gets_store_indices_of_the_split_every_epoch(spied_bcl_d_run):
    observed, _, _ = spied_bcl_d_run
    split = np.load(SPLIT)
    steps = len(observed) // 2
    for epoch in (observed[:steps], observed[steps:]):
        indices = torch.cat([batch for batch, _ in epoch]).tolist()
        assert sorted(indices) == sorted(split.tolist())  # store indices, each once: the last batch is kept
    assert max(split) >= len(split)  # so positions in the split could not pass for store indices


def test_bcl_d_memory_gets_the_dense_loss_of_each_step(spied_bcl_d_run):
    # L1 = NT-Xent(dense z1, pruned z2 without grad) and L2 = NT-Xent(z1 detached, pruned z2) have the same
    # values (they differ in where the gradient goes); the spy marks L2's per-sample losses (+1), so this
    # pins the memory to L1's per-sample losses of the same step, one update per step.
    observed, losses, _ = spied_bcl_d_run
    assert len(losses) == 2 * len(observed)  # per step: dense L1, then pruned L2
    for step, (indices, per_sample) in enumerate(observed):
        assert per_sample.shape == indices.shape and torch.equal(per_sample, losses[2 * step])


def test_bcl_d_shares_u_between_the_two_views_of_a_sample(spied_bcl_d_run):
    observed, _, strengths = spied_bcl_d_run
    assert len(strengths) == 2 * len(observed)  # one boost stage per view
    for step in range(len(observed)):
        view1, view2 = strengths[2 * step], strengths[2 * step + 1]
        assert torch.equal(view1, view2)
    second_epoch = strengths[len(strengths) // 2:]
    weights, magnitudes = second_epoch[0][:, 0], second_epoch[0][:, 1]
    u = (magnitudes - 5) / (25 * weights).clamp_min(1e-12)  # M = 5 + 25 w U
    assert weights.std() > 0 and u.min() >= 0 and u.max() <= 1 and u.std() > 0.1  # U varies between samples


def test_probe_trains_on_the_recipe_probe_list_and_groups_come_from_the_pretraining_split(
        digits_store, tmp_path, monkeypatch):
    run = pretrain(recipe_from_dict({
        "data": {"store": str(digits_store), "split": str(SPLIT)},
        "model": {"width": 4, "projector_hidden": 16, "projector_out": 8},
        "train": {"epochs": 1, "batch_size": 128, "out_dir": str(tmp_path), "progress": False,
                  "precision": "fp32", "device": "cpu", "name": "probe"},
    }, "test"))
    labels = np.asarray(Store.open(digits_store).part("train").labels)
    probe_list = np.random.default_rng(0).choice(len(labels), 300, replace=False)
    np.save(tmp_path / "probe.npy", probe_list)
    seen = []
    original = protocol.train_linear_probe

    def train_linear_probe(features, targets, num_classes, config, after_epoch=None):
        seen.append((features.shape[0], targets.clone()))
        return original(features, targets, num_classes, config)

    monkeypatch.setattr(protocol, "train_linear_probe", train_linear_probe)
    result = protocol.linear_eval(run, overrides={"train_split": str(tmp_path / "probe.npy"), "epochs": 2,
                                                   "knn": ()})
    [(rows, targets)] = seen
    assert rows == 300 and targets.tolist() == labels[np.sort(probe_list)].tolist()
    expected = class_groups(class_counts(np.load(SPLIT), labels, 10), "thirds")
    recorded = result.reports["bcl:full"]["linear"]
    report = (result.folders["bcl:full"] / "eval.json").read_text()
    assert str(tmp_path / "probe.npy") in report
    groups = json.loads(report)["groups"]
    assert groups == {name: ids.tolist() for name, ids in expected.items()}
    per_class = recorded["per_class"]
    assert recorded["few"] == pytest.approx(np.mean([per_class[c] for c in expected["few"]]))


def test_linear_eval_of_a_multi_exit_run_reads_the_chosen_exit(digits_store, tmp_path, monkeypatch):
    run = pretrain(recipe_from_dict({
        "data": {"store": str(digits_store), "split": str(SPLIT)},
        "method": {"name": "selfcon"},
        "model": {"width": 4, "head": "mlp", "projector_hidden": 16, "projector_out": 8},
        "train": {"epochs": 1, "batch_size": 128, "out_dir": str(tmp_path), "progress": False,
                  "precision": "fp32", "device": "cpu", "name": "selfcon"},
    }, "test"))
    widths = []
    original = protocol.train_linear_probe

    def train_linear_probe(features, targets, num_classes, config, after_epoch=None):
        widths.append(features.shape[1])
        return original(features, targets, num_classes, config)

    monkeypatch.setattr(protocol, "train_linear_probe", train_linear_probe)
    folders = {exit: protocol.linear_eval(run, overrides={"epochs": 1, "knn": (), "exit": exit}).folders["bcl:full"]
               for exit in ("backbone", "sub-network", "ensemble")}
    assert widths == [32, 32, 64]  # width 4: 32 features per exit, both side by side for the ensemble
    assert [folder.name for folder in folders.values()] == [
        "bcl-linear-all-train", "bcl-linear-all-train-sub-network-exit", "bcl-linear-all-train-ensemble-exit"]
    assert json.loads((folders["sub-network"] / "eval.json").read_text())["exit"] == "sub-network"
    for bad, message in (({"exit": "head"}, "eval.exit: must be one of backbone"),
                         ({"epochs": 0}, "eval.epochs: must be >= 1"),
                         ({"lr_decay": 0.1}, "eval.lr_decay: unknown key")):
        with pytest.raises(FastltError, match=message):
            protocol.linear_eval(run, overrides=bad)
