"""`linear-eval --protocol`: the TS protocol against a direct computation, the SDCLR protocol's lists and record,
and all protocols from one feature extraction per backbone."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image
from sklearn.svm import LinearSVC

import fastlt.evaluate.protocol as protocol
from fastlt.data.store import Store
from fastlt.errors import FastltError
from fastlt.evaluate.features import extract_features
from fastlt.recipe import recipe_from_dict
from fastlt.train.checkpoint import load_checkpoint


def run_inputs(run: Path):
    """The run's store, split, recipe and pretrained backbone, rebuilt without the protocol module's planning."""
    payload = load_checkpoint(run / "checkpoints" / "last.pt")
    recipe = recipe_from_dict(payload["recipe"], source="test")
    store = Store.open(Path(recipe.data.store))
    split = np.load(recipe.data.split)
    backbone = protocol.pretrained_backbone(payload, recipe, len(store.part("train").labels), run / "x.pt")
    return store, split, backbone


def test_ts_protocol_is_knn_and_svms_on_the_long_tailed_split(tiny_run, tmp_path):
    result = protocol.linear_eval(tiny_run, tmp_path, overrides={"protocol": "ts", "knn": (1,)})
    rows = result.reports["ts:full"]
    assert list(rows) == ["knn@1", "svm FS", "svm LT"]
    store, split, backbone = run_inputs(tiny_run)
    train, test = store.part("train"), store.part("test")
    memory = F.normalize(extract_features(backbone, train.images[np.sort(split)], "cpu"), dim=1)
    memory_labels = np.asarray(train.labels)[np.sort(split)]
    queries = F.normalize(extract_features(backbone, np.asarray(test.images), "cpu"), dim=1)
    test_labels = np.asarray(test.labels)

    def class_mean(predictions):
        return 100 * np.mean([np.mean(predictions[test_labels == c] == c) for c in np.unique(test_labels)])

    nearest = memory_labels[(queries @ memory.T).argmax(1).numpy()]
    assert rows["knn@1"]["class_mean"] == pytest.approx(class_mean(nearest))
    svc = LinearSVC(random_state=1).fit(memory.numpy(), memory_labels)
    assert rows["svm LT"]["class_mean"] == pytest.approx(class_mean(svc.predict(queries.numpy())))
    assert rows["svm FS"]["class_mean"] != rows["svm LT"]["class_mean"]  # FS fits a balanced subsample
    folder = result.folders["ts:full"]
    assert folder.name == "ts-ratio10_seed1"
    markdown = (folder / "eval.md").read_text()
    assert "Temperature-Schedules protocol" in markdown and "| evaluation | class mean | many |" in markdown
    record = json.loads((folder / "eval.json").read_text())
    assert record["protocol"]["name"] == "ts" and record["probe_lists"][0]["samples"] == len(split)


def test_sdclr_protocol_never_fits_on_the_held_out_list_and_records_its_epochs(tiny_run, tmp_path):
    store, split, _ = run_inputs(tiny_run)
    labels = np.asarray(store.part("train").labels)
    outside = np.setdiff1d(np.arange(len(labels)), split)
    # 3 pretraining samples of each class, and one held-out sample of each, which the fc must leave out
    few = np.concatenate([np.concatenate([rows[np.isin(rows, split)][:3], rows[~np.isin(rows, split)][:1]])
                          for rows in (np.flatnonzero(labels == c) for c in range(10))])
    np.save(tmp_path / "S_b.npy", few)
    result = protocol.linear_eval(tiny_run, tmp_path / "reports", overrides={
        "protocol": "sdclr", "sdclr_epochs": 3, "sdclr_few_shot_epochs": 2,
        "sdclr_few_shot_list": str(tmp_path / "S_b.npy")})
    assert set(result.folders) == {"sdclr:full", "sdclr:few"}
    full = json.loads((result.folders["sdclr:full"] / "eval.json").read_text())
    # digits: the probe list is the whole part and the held-out list the samples outside the split,
    # so the fc trains on the split itself.
    assert full["probe_lists"][0]["samples"] == len(labels) - len(outside) == len(split)
    assert full["protocol"]["held_out"]["samples"] == len(outside)
    assert full["protocol"]["fc"]["milestones"] == [1, 2] and full["protocol"]["fc"]["lr"] == 30.0
    assert 1 <= full["fc"]["best_epoch"] <= 3 and len(full["fc"]["held_out_accuracy"]) == 3
    few_record = json.loads((result.folders["sdclr:few"] / "eval.json").read_text())
    held = set(outside)
    assert few_record["probe_lists"][0]["samples"] == sum(i not in held for i in few) < len(few)
    assert few_record["protocol"]["fc"]["milestones"] == [1, 1] and len(few_record["fc"]["held_out_accuracy"]) == 2
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
        "bcl-linear-all-train", "sdclr-linear-all-train", "ts-ratio10_seed1"]
    assert len(calls) == 4  # train rows and test images, for the pretrained and the random-init backbone
    for folder in result.folders.values():  # each report draws its first row's per-class accuracy
        with Image.open(folder / "per_class.png") as image:
            assert image.format == "PNG" and image.size[0] > 300
        assert "![per-class accuracy against training images](per_class.png)" in (folder / "eval.md").read_text()
    assert all("random-init linear" in result.reports[key] or "random-init knn@1" in result.reports[key]
               for key in result.reports)
