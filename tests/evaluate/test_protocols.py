"""`linear-eval --protocol`: the TS protocol against the TS notebooks' code run directly, the SDCLR protocol's lists
and record, and all protocols from one feature extraction per backbone (plus TS's augmented split)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from numpy import linalg as LA
from PIL import Image
from sklearn.svm import LinearSVC

import fastlt.evaluate.protocol as protocol
from fastlt.data.store import Store
from fastlt.errors import FastltError
from fastlt.measure.features import extract_features
from fastlt.recipe import recipe_from_dict
from fastlt.checkpoint import load_checkpoint


def run_inputs(run: Path):
    """The run's store, split, pretrained backbone and seed, rebuilt without the protocol module's planning."""
    payload = load_checkpoint(run / "checkpoints" / "last.pt")
    recipe = recipe_from_dict(payload["recipe"], source="test")
    store = Store.open(Path(recipe.data.store))
    split = np.load(recipe.data.split)
    backbone = protocol.pretrained_backbone(payload, recipe, len(store.part("train").labels), run / "x.pt")
    return store, split, backbone, recipe.train.seed


def notebook_train_transform(images: np.ndarray, seed: int) -> np.ndarray:
    """The CIFAR notebooks' transform_train, RandomCrop(32, padding=4) + RandomHorizontalFlip(), once per image with
    torchvision's functional ops, at the offsets and flips fastlt documents drawing (offsets for all, then flips)
    from a generator seeded with the run's seed."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 9, (len(images), 2), generator=generator).tolist()
    flips = (torch.rand(len(images), generator=generator) < 0.5).tolist()
    views = []
    for image, (top, left), flip in zip(torch.from_numpy(images).permute(0, 3, 1, 2), offsets, flips):
        view = TF.crop(TF.pad(image, [4], fill=0), top, left, image.shape[1], image.shape[2])
        views.append(TF.horizontal_flip(view) if flip else view)
    return torch.stack(views).permute(0, 2, 3, 1).numpy()


def unit(features: torch.Tensor) -> np.ndarray:
    """The notebooks' normalisation: features / LA.norm(features, 2, axis=-1)."""
    features = features.numpy()
    return features / LA.norm(features, 2, axis=-1).reshape(-1, 1)


def notebook_svm(train, train_gt, test, test_gt) -> float:
    """The notebooks' SVM accuracy: LinearSVC(random_state=42) (2022's dual=True), (predictions == gt).sum() / len."""
    predictions = LinearSVC(random_state=42, dual=True).fit(train, train_gt).predict(test)
    return 100 * (predictions == test_gt).sum() / len(test_gt)


def test_ts_protocol_is_the_cifar_notebooks_evaluation(tiny_run, tmp_path, ts_notebook):
    """Default settings: the split's features through the notebooks' training transform once, kNN and the SVMs on
    them, FS on the notebooks' numpy subsample; the test features clean."""
    result = protocol.linear_eval(tiny_run, tmp_path, overrides={"protocol": "ts"})
    rows = result.reports["ts:full"]
    assert list(rows) == ["knn@1", "knn@10", "svm FS", "svm LT"]
    store, split, backbone, seed = run_inputs(tiny_run)
    train, test = store.part("train"), store.part("test")
    memory = extract_features(backbone, notebook_train_transform(np.asarray(train.images)[split], seed), "cpu")
    memory_gt = np.asarray(train.labels)[split]  # the split's file order
    queries = extract_features(backbone, np.asarray(test.images), "cpu")
    test_gt = np.asarray(test.labels)
    for k in (1, 10):
        class_acc, _ = ts_notebook.knn(memory.numpy(), memory_gt, queries.numpy(), test_gt, 10, k)
        assert rows[f"knn@{k}"]["class_mean"] == pytest.approx(100 * np.mean(class_acc))
    fs_data, fs_gt = ts_notebook.few_shot(unit(memory), memory_gt, 10)
    assert rows["svm FS"]["overall"] == pytest.approx(notebook_svm(fs_data, fs_gt, unit(queries), test_gt))
    assert rows["svm LT"]["overall"] == pytest.approx(notebook_svm(unit(memory), memory_gt, unit(queries), test_gt))
    clean = extract_features(backbone, np.asarray(train.images)[split], "cpu")
    clean_acc, _ = ts_notebook.knn(clean.numpy(), memory_gt, queries.numpy(), test_gt, 10, 1)
    assert rows["knn@1"]["class_mean"] != pytest.approx(100 * np.mean(clean_acc))  # the views count
    folder = result.folders["ts:full"]
    assert folder.name == "ts-ratio10_seed1"
    markdown = (folder / "eval.md").read_text()
    assert "Temperature-Schedules protocol" in markdown and "| evaluation | class mean | many |" in markdown
    record = json.loads((folder / "eval.json").read_text())
    assert record["protocol"]["name"] == "ts" and record["probe_lists"][0]["samples"] == len(split)
    assert record["protocol"]["split_features"] == f"one pass of RandomCrop(pad 4) + horizontal flip, seed {seed}"
    assert record["protocol"]["svm"]["LinearSVC"]["dual"] is True and record["protocol"]["knn_ties"] == "lowest-class"


def test_ts_protocol_on_clean_features_with_its_own_few_shot_list(tiny_run, tmp_path, ts_notebook):
    """The ImageNet-100 notebook's settings: clean split features, the FS SVM on its own list in file order."""
    store, split, backbone, _ = run_inputs(tiny_run)
    train, test = store.part("train"), store.part("test")
    labels = np.asarray(train.labels)
    few = np.random.default_rng(0).permutation(np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(10)]))
    np.save(tmp_path / "fewshot.npy", few)
    result = protocol.linear_eval(tiny_run, tmp_path / "reports", overrides={
        "protocol": "ts", "knn": (1,), "ts_train_views": "clean", "ts_few_shot_list": str(tmp_path / "fewshot.npy")})
    rows = result.reports["ts:full"]
    memory = extract_features(backbone, np.asarray(train.images)[split], "cpu")
    queries = extract_features(backbone, np.asarray(test.images), "cpu")
    test_gt = np.asarray(test.labels)
    class_acc, _ = ts_notebook.knn(memory.numpy(), labels[split], queries.numpy(), test_gt, 10, 1)
    assert rows["knn@1"]["class_mean"] == pytest.approx(100 * np.mean(class_acc))
    fs = extract_features(backbone, np.asarray(train.images)[few], "cpu")
    assert rows["svm FS"]["overall"] == pytest.approx(notebook_svm(unit(fs), labels[few], unit(queries), test_gt))
    assert rows["svm LT"]["overall"] == pytest.approx(notebook_svm(unit(memory), labels[split], unit(queries), test_gt))
    record = json.loads((result.folders["ts:full"] / "eval.json").read_text())
    assert [entry["samples"] for entry in record["probe_lists"]] == [len(split), 40]
    assert record["protocol"]["split_features"] == "clean"
    assert record["protocol"]["svm"]["FS"].startswith("eval.ts_few_shot_list")


def test_sdclr_protocol_never_fits_on_the_held_out_list_and_records_its_epochs(tiny_run, tmp_path):
    store, split, _, _ = run_inputs(tiny_run)
    labels = np.asarray(store.part("train").labels)
    outside = np.setdiff1d(np.arange(len(labels)), split)
    # 3 pretraining samples of each class, and one held-out sample of each, which the fc must leave out
    few = np.concatenate([np.concatenate([rows[np.isin(rows, split)][:3], rows[~np.isin(rows, split)][:1]])
                          for rows in (np.flatnonzero(labels == c) for c in range(10))])
    np.save(tmp_path / "S_b.npy", few)
    result = protocol.linear_eval(tiny_run, tmp_path / "reports", overrides={
        "protocol": "sdclr", "sdclr_epochs": 3, "sdclr_val_every": 2, "sdclr_few_shot_epochs": 2,
        "sdclr_few_shot_val_every": 1, "sdclr_few_shot_list": str(tmp_path / "S_b.npy")})
    assert set(result.folders) == {"sdclr:full", "sdclr:few"}
    full = json.loads((result.folders["sdclr:full"] / "eval.json").read_text())
    # digits: the probe list is the whole part and the held-out list the samples outside the split,
    # so the fc trains on the split itself.
    assert full["probe_lists"][0]["samples"] == len(labels) - len(outside) == len(split)
    assert full["protocol"]["held_out"]["samples"] == len(outside)
    assert full["protocol"]["fc"]["milestones"] == [1, 2] and full["protocol"]["fc"]["lr"] == 30.0
    assert full["protocol"]["fc"]["lr_step"] == "before-epoch" and full["protocol"]["fc"]["select"] == "top1"
    assert full["fc"]["best_epoch"] == 2 and list(full["fc"]["held_out_accuracy"]) == ["2"]  # only epoch 2 checked
    few_record = json.loads((result.folders["sdclr:few"] / "eval.json").read_text())
    held = set(outside)
    assert few_record["probe_lists"][0]["samples"] == sum(i not in held for i in few) < len(few)
    assert few_record["protocol"]["fc"]["milestones"] == [1, 1] and list(few_record["fc"]["held_out_accuracy"]) == [
        "1", "2"]
    assert "SDCLR linear protocol (few-shot)" in (result.folders["sdclr:few"] / "eval.md").read_text()

    np.save(tmp_path / "overlap.npy", split[:5])
    with pytest.raises(FastltError, match="overlap.npy: eval.val_split overlaps the pretraining split"):
        protocol.linear_eval(tiny_run, tmp_path / "r2", overrides={"protocol": "sdclr",
                                                                  "val_split": str(tmp_path / "overlap.npy")})
    with pytest.raises(FastltError, match="eval.protocol: must be one of bcl, sdclr, ts, all"):
        protocol.linear_eval(tiny_run, tmp_path / "r3", overrides={"protocol": "simclr"})


def test_all_protocols_share_one_feature_extraction_per_backbone(tiny_run, tmp_path, monkeypatch):
    calls = []
    original = protocol.extract_features

    def counted(module, images, *args, **kwargs):
        calls.append(len(images))
        return original(module, images, *args, **kwargs)

    monkeypatch.setattr(protocol, "extract_features", counted)
    result = protocol.linear_eval(tiny_run, tmp_path, random_init=True, overrides={
        "protocol": "all", "epochs": 2, "knn": (1,), "sdclr_epochs": 1})
    assert sorted(path.name for path in result.folders.values()) == [
        "bcl-linear-all-train", "sdclr-linear-ratio10_seed1", "ts-ratio10_seed1"]
    # train rows and test images, and TS's augmented split, for the pretrained and the random-init backbone
    assert len(calls) == 6
    for folder in result.folders.values():  # each report draws its first row's per-class accuracy
        with Image.open(folder / "per_class.png") as image:
            assert image.format == "PNG" and image.size[0] > 300
        assert "![per-class accuracy against training images](per_class.png)" in (folder / "eval.md").read_text()
    assert all("random-init linear" in result.reports[key] or "random-init knn@1" in result.reports[key]
               for key in result.reports)
