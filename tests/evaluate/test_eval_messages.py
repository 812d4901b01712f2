"""What linear-eval tells the user: the lists its reports and errors name (a split file, a list fastlt derived, store
lists), its progress line on stderr, the warning for a shortened probe schedule, and --sdclr-epochs."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fastlt.evaluate.protocol as protocol
from fastlt.cli import main
from fastlt.data.splits import split_checksum
from fastlt.data.store import Store
from fastlt.errors import FastltError
from fastlt.checkpoint import load_checkpoint, save_checkpoint


def report(folder: Path) -> dict:
    return json.loads((folder / "eval.json").read_text())


def run_lists(run: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """The run's store folder, its split file's indices, the train part's labels and the samples outside the split."""
    recipe = load_checkpoint(run / "checkpoints" / "last.pt")["recipe"]
    store = Path(recipe["data"]["store"])
    split = np.load(recipe["data"]["split"])
    labels = np.asarray(Store.open(store).part("train").labels)
    return store, split, labels, np.setdiff1d(np.arange(len(labels)), split)


def test_sdclr_reports_name_the_split_they_train_on_and_the_held_out_list(tiny_run, tmp_path):
    """The digits: the probe list is the whole part and the held-out list the samples outside the split, so the fc
    trains on the split, and the report, its folder and its held-out record say so."""
    _, split, _, outside = run_lists(tiny_run)
    split_file = load_checkpoint(tiny_run / "checkpoints" / "last.pt")["recipe"]["data"]["split"]
    result = protocol.linear_eval(tiny_run, tmp_path, overrides={"protocol": "sdclr", "sdclr_epochs": 1})
    folder = result.folders["sdclr:full"]
    assert folder.name == "sdclr-linear-ratio10_seed1"
    record = report(folder)
    assert record["probe_lists"] == [{"file": split_file, "sha256": split_checksum(np.sort(split)),
                                      "samples": len(split)}]
    assert record["protocol"]["held_out"] == {"file": f"(the train part outside {split_file})",
                                              "sha256": split_checksum(outside), "samples": len(outside)}
    markdown = (folder / "eval.md").read_text()
    assert "whole train part" not in markdown and f"(the train part outside {split_file})" in markdown


def test_a_probe_list_less_its_held_out_samples_is_named_so_in_reports_and_errors(tiny_run, tmp_path):
    _, split, labels, outside = run_lists(tiny_run)
    # two pretraining samples of each class and one held-out sample of each, which the fc leaves out
    probe = np.concatenate([np.concatenate([np.intersect1d(rows, split)[:2], np.intersect1d(rows, outside)[:1]])
                            for rows in (np.flatnonzero(labels == c) for c in range(10))])
    np.save(tmp_path / "probe.npy", probe)
    result = protocol.linear_eval(tiny_run, tmp_path / "reports", overrides={
        "protocol": "sdclr", "sdclr_epochs": 1, "train_split": str(tmp_path / "probe.npy")})
    folder = result.folders["sdclr:full"]
    split_file = load_checkpoint(tiny_run / "checkpoints" / "last.pt")["recipe"]["data"]["split"]
    assert folder.name == "sdclr-linear-probe-less-outside-ratio10_seed1"
    kept = np.setdiff1d(probe, outside)
    assert report(folder)["probe_lists"] == [{
        "file": f"({tmp_path / 'probe.npy'} less the train part outside {split_file})",
        "sha256": split_checksum(kept), "samples": 20}]

    # class 3 only among the held-out samples: the list left has none of it, and the error names that list
    np.save(tmp_path / "no3.npy", np.concatenate([probe[labels[probe] != 3], np.intersect1d(
        np.flatnonzero(labels == 3), outside)[:2]]))
    with pytest.raises(FastltError, match="^" + re.escape(f"{tmp_path / 'no3.npy'} less the train part outside "
                                                          f"{split_file}: no sample of class 3 ")):
        protocol.linear_eval(tiny_run, tmp_path / "r3", overrides={
            "protocol": "sdclr", "train_split": str(tmp_path / "no3.npy")})


def test_store_lists_are_named_by_their_files_in_the_sdclr_report(tiny_run, tmp_path):
    store, split, labels, outside = run_lists(tiny_run)
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    probe = np.concatenate([np.intersect1d(np.flatnonzero(labels == c), split)[:3] for c in range(10)])
    held = np.concatenate([np.intersect1d(np.flatnonzero(labels == c), outside)[:2] for c in range(10)])
    (copy / "lists").mkdir(exist_ok=True)
    np.save(copy / "lists" / "probe.npy", probe)
    np.save(copy / "lists" / "held.npy", held)
    result = protocol.linear_eval(tiny_run, tmp_path / "reports", store_path=copy, overrides={
        "protocol": "sdclr", "sdclr_epochs": 1, "train_split": "store:probe", "val_split": "store:held"})
    folder = result.folders["sdclr:full"]
    assert folder.name == "sdclr-linear-probe"
    record = report(folder)
    assert record["probe_lists"] == [{"file": str(copy / "lists" / "probe.npy"),
                                      "sha256": split_checksum(np.sort(probe)), "samples": 30}]
    assert record["protocol"]["held_out"] == {"file": str(copy / "lists" / "held.npy"),
                                              "sha256": split_checksum(np.sort(held)), "samples": len(held)}


@pytest.fixture(scope="module")
def watched_run(tiny_run, tmp_path_factory) -> Path:
    """The tiny run's checkpoint in a run folder of its own, recorded with the progress line on."""
    run = tmp_path_factory.mktemp("watched") / "watched"
    payload = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    payload["recipe"]["train"]["progress"] = True
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(run / "checkpoints" / "last.pt", payload)
    return run


def test_linear_eval_shows_its_stages_and_warns_of_shortened_probes(watched_run, tmp_path):
    store, _, labels, _ = run_lists(watched_run)
    test_images = len(Store.open(store).part("test").labels)
    result = CliRunner().invoke(main, ["linear-eval", str(watched_run), "--out", str(tmp_path), "--device", "cpu",
                                       "--protocol", "all", "--epochs", "3", "--sdclr-epochs", "2", "--knn", "1"])
    assert result.exit_code == 0, result.output
    said = result.stderr
    assert "\r" not in said  # not a terminal: plain lines, as pretraining's
    assert (f"linear-eval watched: features of the pretrained backbone: {len(labels) + test_images:,}/"
            f"{len(labels) + test_images:,} images in ") in said
    for stage in ("bcl: linear probe on all-train: 3/3 epochs in ", "sdclr: fc on ratio10_seed1: 2/2 epochs in ",
                  "ts: augmented split features: 468/468 images in ", "ts: svm FS: 1/1 fits in ",
                  "ts: svm LT: 1/1 fits in "):
        assert f"linear-eval watched: {stage}" in said
    assert ("warning: BCL linear probe: 3 epochs (eval.epochs) instead of the 500 of the run's recipe: its lr still "
            "decays from 0.01 to 1e-06, in fewer and larger steps; its numbers are not the protocol's\n") in said
    assert ("warning: SDCLR linear protocol: 2 epochs (eval.sdclr_epochs) instead of the 30 of the run's recipe: its "
            "lr still steps x0.1 at the same fractions of them; its numbers are not the protocol's\n") in said
    sdclr = report(tmp_path / "sdclr-linear-ratio10_seed1")  # --sdclr-epochs reached the fc
    assert sdclr["protocol"]["fc"]["epochs"] == 2 and list(sdclr["fc"]["held_out_accuracy"]) == ["1", "2"]
    assert report(tmp_path / "bcl-linear-all-train")["protocol"]["linear"]["epochs"] == 3


def test_the_progress_line_follows_the_runs_switch_and_the_recipes_epochs_give_no_warning(tiny_run, tmp_path):
    result = CliRunner().invoke(main, ["linear-eval", str(tiny_run), "--out", str(tmp_path), "--device", "cpu",
                                       "--knn", "1"])
    assert result.exit_code == 0, result.output
    assert "linear-eval tiny:" not in result.stderr and "warning" not in result.stderr  # train.progress = false
