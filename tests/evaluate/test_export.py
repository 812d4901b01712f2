"""`fastlt export`: a run's backbone as a torchvision ResNet state dict that loads strictly and computes the same
features, SDCLR's dense branch, refusals (non-standard width, an existing file) and the command end to end."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from fastlt.cli import main
from fastlt.data.store import Store
from fastlt.errors import FastltError
from fastlt.evaluate.export import FORMAT, export_torchvision, torchvision_resnet, torchvision_state_dict
from fastlt.evaluate.protocol import pretrained_backbone
from fastlt.files import file_digest
from fastlt.models.resnet import build_resnet
from fastlt.models.self_damaging import DENSE, PRUNED, DualBatchNorm, prunable_convolutions
from fastlt.recipe import recipe_from_dict
from fastlt.checkpoint import load_checkpoint
from fastlt.train.trainer import pretrain

FC_KEYS = {"fc.weight", "fc.bias"}


@pytest.fixture(scope="module")
def make_run(digits_store, tmp_path_factory):
    """Train (once per arguments) a 1-epoch width-64 ResNet-18 on one digit of each class at 16x16, fp32 on the
    CPU (pretraining refuses a split without some class)."""
    out = tmp_path_factory.mktemp("export_runs")
    split = out / "one_per_class.npy"
    labels = np.asarray(Store.open(digits_store).labels("train"))
    np.save(split, np.array([np.flatnonzero(labels == label)[0] for label in range(10)], dtype=np.int64))
    made: dict[tuple, Path] = {}

    def make(method: str = "simclr", stem: str = "cifar", width: int = 64) -> Path:
        key = (method, stem, width)
        if key not in made:
            recipe = recipe_from_dict({
                "data": {"store": str(digits_store), "split": str(split)},
                "views": {"size": 16},
                "model": {"arch": "resnet18", "stem": stem, "width": width, "projector_hidden": 16,
                          "projector_out": 8},
                "method": {"name": method, "pruning_ratio": 0.5},
                "optim": {"lr": 0.1, "warmup_epochs": 0},
                "train": {"epochs": 1, "batch_size": 5, "out_dir": str(out), "progress": False,
                          "precision": "fp32", "device": "cpu", "compile": "off",
                          "name": f"{method}-{stem}-w{width}"},
            }, "test")
            made[key] = pretrain(recipe)
        return made[key]

    return make


def fastlt_extractor(run: Path) -> torch.nn.Module:
    """The backbone exit linear-eval would use (SDCLR: the DenseBranch wrapper), in eval mode."""
    checkpoint = run / "checkpoints" / "last.pt"
    payload = load_checkpoint(checkpoint)
    recipe = recipe_from_dict(payload["recipe"], "test")
    return pretrained_backbone(payload, recipe, int(payload["data"]["count"]), checkpoint).eval()


def load_export(path: Path) -> tuple[dict, torch.nn.Module]:
    """What a user does: weights_only load, the helper's torchvision model, a strict load."""
    exported = torch.load(path, weights_only=True)
    model = torchvision_resnet(exported["arch"], exported["stem"])
    model.load_state_dict(exported["state_dict"], strict=True)
    return exported, model.eval()


def torchvision_features(exported: dict, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(exported["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(exported["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((images - mean) / std)


def sample_images(digits_store: Path) -> torch.Tensor:
    """Real test images (uint8 NHWC -> float NCHW in [0, 1]), 16x16 like the views the run trained on."""
    images = np.load(digits_store / "test_images.npy", mmap_mode="r")[:6]
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
    return torch.nn.functional.interpolate(x, size=16, mode="bilinear", antialias=True)


@pytest.mark.parametrize("method,stem", [("simclr", "cifar"), ("simclr", "imagenet"), ("selfcon", "cifar")])
def test_export_loads_strictly_into_torchvision_with_the_same_features(make_run, digits_store, tmp_path, method,
                                                                       stem):
    run = make_run(method, stem)
    out = tmp_path / "backbone.pt"
    export_torchvision(run, out)
    exported, model = load_export(out)

    checkpoint = run / "checkpoints" / "last.pt"
    assert exported["format"] == FORMAT and exported["version"] == 1
    assert (exported["arch"], exported["stem"], exported["feature_dim"]) == ("resnet18", stem, 512)
    assert exported["mean"] == [0.485, 0.456, 0.406] and exported["std"] == [0.229, 0.224, 0.225]
    assert exported["fastlt"] | {"version": None} == {
        "version": None, "run": str(run), "checkpoint": str(checkpoint), "checkpoint_sha256": file_digest(checkpoint),
        "epoch": 1, "method": method, "encoder": "multi-exit" if method == "selfcon" else "plain", "exit": "backbone"}
    # torchvision's own keys exactly, fc aside; only the CIFAR stem's conv1 differs in shape
    reference = torchvision.models.resnet18().state_dict()
    assert set(exported["state_dict"]) == set(reference) - FC_KEYS
    changed = {k for k, v in exported["state_dict"].items() if v.shape != reference[k].shape}
    assert changed == ({"conv1.weight"} if stem == "cifar" else set())
    assert exported["state_dict"]["bn1.num_batches_tracked"] == 2  # trained BN statistics, not the initial ones

    images = sample_images(digits_store)
    with torch.no_grad():
        expected = fastlt_extractor(run)(images)
    assert expected.shape == (6, 512) and expected.std(dim=0).max() > 0  # features that tell images apart
    torch.testing.assert_close(torchvision_features(exported, model, images), expected, rtol=1e-5, atol=1e-5)


def test_a_self_damaging_run_exports_its_dense_branch(make_run, digits_store, tmp_path):
    run = make_run("sdclr")
    out = tmp_path / "sdclr.pt"
    export_torchvision(run, out)
    exported, model = load_export(out)
    assert exported["fastlt"]["method"] == "sdclr" and "dense branch" in exported["fastlt"]["encoder"]

    dense_branch = fastlt_extractor(run)
    backbone = dense_branch.backbone
    stem_norm = backbone.stem[1]
    assert isinstance(stem_norm, DualBatchNorm)
    dense, pruned = stem_norm.copies[DENSE], stem_norm.copies[PRUNED]
    assert not torch.equal(dense.running_mean, pruned.running_mean)  # the copies saw different views
    torch.testing.assert_close(exported["state_dict"]["bn1.running_mean"], dense.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(exported["state_dict"]["bn1.weight"], dense.weight, rtol=0, atol=0)
    assert not any(key.endswith("mask") or "copies" in key for key in exported["state_dict"])

    images = sample_images(digits_store)
    features = torchvision_features(exported, model, images)
    with torch.no_grad():
        torch.testing.assert_close(features, dense_branch(images), rtol=1e-5, atol=1e-5)
        # The same dense weights with the pruned branch's batch-norm copies give other features.
        for conv in prunable_convolutions(backbone):
            conv.mask.fill_(True)
        dense_branch.switch.active = PRUNED
        with_pruned_norms = backbone(images)
        dense_branch.switch.active = DENSE
    assert not torch.allclose(features, with_pruned_norms, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("arch,stem", [("resnet34", "imagenet"), ("resnet50", "cifar")])
def test_deeper_architectures_map_onto_torchvision(arch, stem):
    # No training: a fresh backbone with random batch-norm statistics, to cover stage depths and bottlenecks.
    torch.manual_seed(0)
    backbone = build_resnet(arch, stem=stem)
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1), module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5), module.bias.data.uniform_(-0.1, 0.1)
    backbone.eval()
    model = torchvision_resnet(arch, stem).eval()
    model.load_state_dict(torchvision_state_dict(backbone), strict=True)
    images = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(backbone.normalize(images)), backbone(images), rtol=1e-5, atol=1e-5)


def test_non_standard_width_is_refused_and_nothing_is_written(make_run, tmp_path):
    run = make_run("simclr", "cifar", width=8)
    out = tmp_path / "narrow.pt"
    with pytest.raises(FastltError, match="model.width is 8") as error:
        export_torchvision(run, out)
    assert str(run) in str(error.value) and "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_kept_unless_overwrite(make_run, tmp_path):
    run = make_run()
    out = tmp_path / "taken.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(FastltError, match="exists already; pass --overwrite to replace it") as error:
        export_torchvision(run, out)
    assert str(out) in str(error.value)
    assert out.read_bytes() == b"keep me"
    export_torchvision(run, out, overwrite=True)
    assert torch.load(out, weights_only=True)["format"] == FORMAT
    assert [p.name for p in tmp_path.iterdir()] == ["taken.pt"]  # no temporary file left beside it
    checkpoint = run / "checkpoints" / "last.pt"
    before = checkpoint.read_bytes()
    with pytest.raises(FastltError, match="is the checkpoint being exported"):
        export_torchvision(run, checkpoint, overwrite=True)
    assert checkpoint.read_bytes() == before


def test_the_command_end_to_end(make_run, tmp_path):
    run = make_run()
    out = tmp_path / "cli" / "backbone.pt"
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output.strip() == f"wrote {out} (resnet18, cifar stem, epoch 1)"
    load_export(out)

    again = CliRunner().invoke(main, ["export", str(run / "checkpoints" / "last.pt"), "--out", str(out)])
    assert again.exit_code == 1
    assert again.output.strip().splitlines() == [f"error: {out}: exists already; pass --overwrite to replace it"]
    assert CliRunner().invoke(main, ["export", str(run), "--out", str(out), "--overwrite"]).exit_code == 0

    narrow = CliRunner().invoke(main, ["export", str(make_run("simclr", "cifar", width=8)), "--out",
                                       str(tmp_path / "narrow.pt")])
    assert narrow.exit_code == 1 and len(narrow.output.strip().splitlines()) == 1
    assert narrow.output.startswith("error: ") and "model.width is 8" in narrow.output
    missing = CliRunner().invoke(main, ["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "x.pt")])
    assert missing.exit_code == 1 and "checkpoint not found" in missing.output
