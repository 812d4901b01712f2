"""The online monitor (held-out kNN during pretraining), the TensorBoard log and the run ETA of the progress line.

Monitor epochs, as documented in fastlt/train/monitor.py: every ``train.monitor_every``-th epoch and the
schedule's last one (``train.epochs``), not the epoch an ``--until-epoch`` invocation stops at, so a run
cut and resumed logs the same epochs as an uninterrupted one.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastlt.data.splits import class_counts, class_groups
from fastlt.data.store import Store
from fastlt.errors import FastltError
from fastlt.methods import build_method
from fastlt.recipe import recipe_from_dict
from fastlt import progress as progress_module
from fastlt.checkpoint import load_checkpoint
from fastlt.train.monitor import MONITOR_KEYS, Monitor
from fastlt.progress import Progress, format_duration, run_eta
from fastlt.train.run_folder import CHECKPOINT_NAME
from fastlt.train.trainer import pretrain, resume_run

ROOT = Path(__file__).resolve().parents[2]
SPLIT = ROOT / "splits" / "digits_lt" / "ratio10_seed1.npy"  # 468 of the 1,198 train images; 730 held out


def tiny(store, out_dir, name, method="simclr", eval_settings=None, **train):
    return recipe_from_dict({
        "data": {"store": str(store), "split": str(SPLIT)},
        "model": {"width": 4, "projector_hidden": 16, "projector_out": 8},
        "method": {"name": method, "pruning_ratio": 0.5},
        "optim": {"lr": 0.1, "warmup_epochs": 1},
        "train": {"epochs": 5, "batch_size": 128, "out_dir": str(out_dir), "progress": False, "precision": "fp32",
                  "device": "cpu", "name": name, **train},
        "eval": eval_settings or {},
    }, "test")


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(value, b[key]) for key, value in a.items())


@pytest.fixture(scope="module")
def monitored(digits_store, tmp_path_factory):
    """5 epochs with the monitor every 2 epochs, and the same run without it."""
    out = tmp_path_factory.mktemp("monitored")
    return (pretrain(tiny(digits_store, out, "on", monitor_every=2)),
            pretrain(tiny(digits_store, out, "off")))


def direct_features(store_path, checkpoint):
    """Normalised backbone features of the split and of the held-out images, one plain forward each."""
    part = Store.open(store_path).part("train")
    split = np.load(SPLIT)
    held_out = np.array([i for i in range(len(part.labels)) if i not in set(split.tolist())])
    payload = load_checkpoint(checkpoint)
    method = build_method(recipe_from_dict(payload["recipe"], "checkpoint"), len(part.labels))
    method.load_state_dict(payload["model"])
    backbone = method.feature_extractor("backbone").eval()

    def features(rows):
        pixels = torch.from_numpy(np.asarray(part.images)[rows]).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return F.normalize(backbone(pixels), dim=1)

    return features(split), features(held_out), method


def loop_vote(memory, queries, memory_labels, k):
    """kNN by a plain loop over queries in float64: (predictions, whether each is clear of near ties).

    The most votes win, a tied vote goes to the lowest class id (eval.knn_ties' default, the TS
    notebooks' rule). A prediction counts as clear when the k-th and (k+1)-th similarities differ by
    more than 1e-5: elsewhere float32 kernels may legitimately order the neighbours another way.
    """
    similarity = F.normalize(queries.double(), dim=1) @ F.normalize(memory.double(), dim=1).T
    predictions, clear = [], []
    for row in similarity:
        order = torch.argsort(row, descending=True).tolist()
        votes = {}
        for j in order[:k]:
            c = int(memory_labels[j])
            votes[c] = votes.get(c, 0) + 1
        predictions.append(max(sorted(votes), key=lambda c: votes[c]))  # max keeps the first (lowest) of equals
        margin = float(row[order[k - 1]] - row[order[k]]) if k < len(order) else 1.0
        clear.append(margin > 1e-5)
    return np.array(predictions), np.array(clear)


def report_by_hand(predictions, truth, memory_labels):
    """Mean per-class accuracy overall and per group (thirds of the split's counts), as plain numpy."""
    per_class = {c: 100.0 * np.mean(predictions[truth == c] == c) for c in range(10) if (truth == c).any()}
    # A class with no held-out image (on the digits split, class 8: all 116 of its train images are in the
    # split) has no accuracy and is left out of every mean.
    counts = [int((memory_labels == c).sum()) for c in range(10)]
    assert len(set(counts)) == 10  # no tie in the split's counts, so the order below is the only one
    ascending = sorted(range(10), key=lambda c: counts[c])
    groups = {"few": ascending[:3], "medium": ascending[3:6], "many": ascending[6:]}
    return {"monitor_knn": np.mean(list(per_class.values())),
            **{f"monitor_knn_{name}": np.mean([per_class[c] for c in ids if c in per_class])
               for name, ids in groups.items()}}


def measured_with_features(recipe, method, digits_store, monkeypatch):
    """Monitor.measure on ``method``, with the features and the predictions it computed on the way."""
    import fastlt.train.monitor as monitor_module

    part = Store.open(digits_store).part("train")
    groups = class_groups(class_counts(np.load(SPLIT), part.labels, 10), "thirds")
    monitor = Monitor.for_recipe(recipe, part, np.load(SPLIT), 10, groups, torch.device("cpu"))
    seen = {}

    def keep(name, function):
        def wrapped(*args, **kwargs):
            seen[name] = function(*args, **kwargs)
            return seen[name]
        monkeypatch.setattr(monitor_module, name, wrapped)

    keep("extract_features", monitor_module.extract_features)
    keep("knn_predict", monitor_module.knn_predict)
    return monitor, monitor.measure(method), seen["extract_features"], seen["knn_predict"]


def check_against_direct(measured, features, predictions, monitor, digits_store, checkpoint, k):
    """Features against a plain forward (float tolerance: other kernels, other batches); every prediction clear
    of near ties against a float64 loop vote; the reported numbers against the predictions, by hand."""
    memory, queries, _ = direct_features(digits_store, checkpoint)
    torch.testing.assert_close(F.normalize(features, dim=1), torch.cat([memory, queries]), atol=2e-4, rtol=0)
    labels = monitor.labels.numpy()
    memory_labels, truth = labels[: monitor.memory_size], labels[monitor.memory_size:]
    expected, clear = loop_vote(features[: monitor.memory_size], features[monitor.memory_size:], memory_labels, k)
    assert clear.sum() >= 100  # hundreds of the 730 predictions are decided, so the comparison means something
    assert np.array_equal(predictions.numpy()[clear], expected[clear])
    by_hand = report_by_hand(predictions.numpy(), truth, memory_labels)
    for key in MONITOR_KEYS:
        assert measured[key] == pytest.approx(by_hand[key], abs=0.005), key


def test_monitor_numbers_equal_a_direct_computation(monitored, digits_store, monkeypatch):
    on, _ = monitored
    logged = records(on)[-1]
    _, _, method = direct_features(digits_store, on / CHECKPOINT_NAME)
    recipe = recipe_from_dict(load_checkpoint(on / CHECKPOINT_NAME)["recipe"], "checkpoint")
    monitor, measured, features, predictions = measured_with_features(recipe, method, digits_store, monkeypatch)
    assert monitor.k == 1  # eval.knn = [1, 10]: k is the first
    assert {key: logged[key] for key in MONITOR_KEYS} == {key: measured[key] for key in MONITOR_KEYS}
    check_against_direct(measured, features, predictions, monitor, digits_store, on / CHECKPOINT_NAME, k=1)
    assert logged["monitor_knn_many"] != logged["monitor_knn_few"]  # the groups are reported apart


def test_monitor_votes_like_the_evaluation_for_larger_k(monitored, digits_store, monkeypatch):
    on, _ = monitored
    recipe = tiny(digits_store, on.parent, "k5", monitor_every=1, eval_settings={"knn": [5, 1]})
    _, _, method = direct_features(digits_store, on / CHECKPOINT_NAME)
    monitor, measured, features, predictions = measured_with_features(recipe, method, digits_store, monkeypatch)
    assert monitor.k == 5 and monitor.memory_size == 468 and len(monitor.labels) == 1198
    check_against_direct(measured, features, predictions, monitor, digits_store, on / CHECKPOINT_NAME, k=5)


def test_monitor_keys_appear_on_monitor_epochs_and_the_last(monitored):
    on, off = monitored
    lines = records(on)
    assert [line["epoch"] for line in lines if "monitor_knn" in line] == [2, 4, 5]  # every 2nd, and the last
    for line in lines:
        keys = {*MONITOR_KEYS, "monitor_seconds"}
        assert keys <= line.keys() if line["epoch"] in (2, 4, 5) else not keys & line.keys()
    assert all(0 <= lines[1][key] <= 100 and lines[1][key] == round(lines[1][key], 2) for key in MONITOR_KEYS)
    assert not any("monitor_knn" in line for line in records(off))


def test_monitor_leaves_the_training_trajectory_unchanged(monitored):
    on, off = monitored
    assert [line["loss"] for line in records(on)] == [line["loss"] for line in records(off)]
    a, b = load_checkpoint(on / CHECKPOINT_NAME), load_checkpoint(off / CHECKPOINT_NAME)
    assert same_weights(a["model"], b["model"])
    assert torch.equal(a["rng"]["data"], b["rng"]["data"])
    (own_a,), (own_b,) = a["rng"]["ranks"], b["rng"]["ranks"]  # one process: its own streams
    assert own_a.keys() == own_b.keys() and all(torch.equal(own_a[key], own_b[key]) for key in own_a)


@pytest.mark.parametrize("method", ["sdclr", "bcl-d"])  # the dense-branch switch; BCL's memory and weights
def test_monitor_leaves_other_methods_unchanged_too(digits_store, tmp_path, method):
    on = pretrain(tiny(digits_store, tmp_path, "on", method, epochs=2, monitor_every=1))
    off = pretrain(tiny(digits_store, tmp_path, "off", method, epochs=2))
    assert [line["loss"] for line in records(on)] == [line["loss"] for line in records(off)]
    assert same_weights(load_checkpoint(on / CHECKPOINT_NAME)["model"], load_checkpoint(off / CHECKPOINT_NAME)["model"])
    assert all("monitor_knn_few" in line for line in records(on))


def test_a_monitored_run_resumes_bit_for_bit(monitored, digits_store, tmp_path):
    on, _ = monitored
    half = pretrain(tiny(digits_store, tmp_path, "half", monitor_every=2), until_epoch=3)
    assert [line["epoch"] for line in records(half) if "monitor_knn" in line] == [2]  # 3 is not the schedule's end
    resume_run(half)
    full_lines, half_lines = records(on), records(half)
    for a, b in zip(full_lines, half_lines, strict=True):
        assert {k: v for k, v in a.items() if "seconds" not in k and k != "images_per_second"} == \
               {k: v for k, v in b.items() if "seconds" not in k and k != "images_per_second"}
    assert same_weights(load_checkpoint(on / CHECKPOINT_NAME)["model"], load_checkpoint(half / CHECKPOINT_NAME)["model"])


def test_a_resume_may_switch_the_monitor_on_and_older_checkpoints_resume(digits_store, tmp_path):
    run = pretrain(tiny(digits_store, tmp_path, "run", epochs=3), until_epoch=1)
    payload = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    for key in ("monitor_every", "tensorboard"):  # as a checkpoint written before these keys existed
        del payload["recipe"]["train"][key]
    torch.save(payload, run / CHECKPOINT_NAME)
    resume_run(run, until_epoch=2)
    resume_run(run, ["train.monitor_every=1"])
    assert [("monitor_knn" in line) for line in records(run)] == [False, False, True]


def test_held_out_list_overlapping_the_split_is_refused_before_anything_is_written(digits_store, tmp_path):
    overlap = tmp_path / "overlap.npy"
    np.save(overlap, np.load(SPLIT)[:5])
    with pytest.raises(FastltError, match=r"overlap.npy: eval.val_split overlaps the pretraining split") as error:
        pretrain(tiny(digits_store, tmp_path / "runs", "x", monitor_every=1,
                      eval_settings={"val_split": str(overlap)}))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("change, message", [
    ({"data": {"split": ""}}, "eval.val_split: empty, and the pretraining split uses every sample"),
    ({"eval": {"knn": [469]}}, r"eval.knn: the monitor's k = 469 must be in \[1, 468\]"),
    ({"eval": {"exit": "sub-network"}}, "eval.exit: 'sub-network' needs a multi-exit encoder"),
])
def test_monitor_settings_are_checked_before_anything_is_written(digits_store, tmp_path, change, message):
    recipe = tiny(digits_store, tmp_path / "runs", "x", monitor_every=1).to_dict()
    for section, values in change.items():
        recipe[section].update(values)
    with pytest.raises(FastltError, match=message):
        pretrain(recipe_from_dict(recipe, "test"))
    assert not (tmp_path / "runs").exists()


def test_a_given_val_split_is_the_query_set(digits_store, tmp_path):
    part = Store.open(digits_store).part("train")
    outside = np.setdiff1d(np.arange(len(part.labels)), np.load(SPLIT))
    val = np.random.default_rng(0).choice(outside, 50, replace=False)
    np.save(tmp_path / "val.npy", val)
    recipe = tiny(digits_store, tmp_path, "v", monitor_every=1, eval_settings={"val_split": str(tmp_path / "val.npy")})
    monitor = Monitor.for_recipe(recipe, part, np.load(SPLIT), 10, {}, torch.device("cpu"))
    assert torch.equal(monitor.images[monitor.memory_size:], torch.from_numpy(np.asarray(part.images)[np.sort(val)]))
    assert torch.equal(monitor.images[:monitor.memory_size], torch.from_numpy(np.asarray(part.images)[np.load(SPLIT)]))
    assert monitor.labels[monitor.memory_size:].tolist() == np.asarray(part.labels)[np.sort(val)].tolist()
    assert Monitor.for_recipe(tiny(digits_store, tmp_path, "w"), part, np.load(SPLIT), 10, {}, "cpu") is None


def test_the_monitor_keeps_the_evaluation_view_only(digits_store, tmp_path):
    """With eval.center_crop the device holds the centre squares (ImageNet: 224 of the stored 256)."""
    part = Store.open(digits_store).part("train")
    recipe = tiny(digits_store, tmp_path, "c", monitor_every=1, eval_settings={"center_crop": 24})
    monitor = Monitor.for_recipe(recipe, part, np.load(SPLIT), 10, {}, torch.device("cpu"))
    expected = torch.from_numpy(np.asarray(part.images)[np.load(SPLIT)])[:, 4:28, 4:28]  # (32 - 24) / 2 = 4
    assert torch.equal(monitor.images[:monitor.memory_size], expected)


def test_tensorboard_gets_every_metrics_number(digits_store, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package (pip install 'fastlt[tensorboard]') "
                                              "is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = pretrain(tiny(digits_store, tmp_path, "tb", epochs=3, monitor_every=2, tensorboard=True), until_epoch=2)
    kept = (run / CHECKPOINT_NAME).read_bytes()
    resume_run(run)  # epoch 3 is logged, then the run is taken back to its epoch-2 checkpoint, as after a crash
    (run / CHECKPOINT_NAME).write_bytes(kept)
    resume_run(run)  # epoch 3 again: its earlier events are purged
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 3
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    lines = records(run)
    numbers = {key for line in lines for key, value in line.items() if key != "epoch" and isinstance(value, float)}
    assert numbers <= set(events.Tags()["scalars"]) and "monitor_knn_few" in numbers
    for key in ("loss", "lr", "monitor_knn", "monitor_knn_few", "step"):
        logged = [(line["epoch"], line[key]) for line in lines if key in line]
        assert [(e.step, e.value) for e in events.Scalars(key)] == [(epoch, pytest.approx(value, rel=1e-6))
                                                                   for epoch, value in logged], key


def test_a_missing_tensorboard_is_one_line_saying_what_to_install(digits_store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an import without the package gives
    with pytest.raises(FastltError, match=r"train.tensorboard: .*pip install 'fastlt\[tensorboard\]'") as error:
        pretrain(tiny(digits_store, tmp_path / "runs", "tb", tensorboard=True))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "runs").exists()


def test_durations_read_at_a_glance():
    assert [format_duration(s) for s in (0, 44.6, 60, 725, 3600, 11_220, 86_400 * 2 + 3600 * 4 + 59)] == [
        "0s", "45s", "1m 00s", "12m 05s", "1h 00m", "3h 07m", "2d 04h"]


def test_run_eta_counts_remaining_epochs_and_monitor_calls():
    assert run_eta([], 3) is None
    assert run_eta([], 0, current_epoch_left=4.0) == 4.0
    assert run_eta([30.0, 2.0, 2.0], 10) == 20.0  # the median: a slow first (compiling) epoch does not skew it
    assert run_eta([2.0], 10, monitor_seconds=5.0, monitors_left=2) == 30.0
    assert run_eta([2.0], 10, monitor_seconds=None, monitors_left=2) == 20.0  # no monitor measured yet
    assert run_eta([2.0], 3, current_epoch_left=1.5) == 7.5


def test_progress_line_shows_the_run_eta_and_the_monitor(monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    progress = Progress(True, 10, last_epoch=10, monitor_epochs={5, 10}, monitor_label="kNN@1")
    base = {"loss": 4.5, "images_per_second": 300.0, "lr": 0.1, "epoch_seconds": 2.0}
    progress.start_epoch(1, 4)
    clock[0] = 1.0
    progress.reading(2, 4.6, 300.0)  # 1 s for half an epoch: 1 s left of it and 9 epochs of 2 s
    clock[0] = 2.0
    progress.end_epoch({"epoch": 1, **base})
    for epoch in range(2, 6):
        progress.start_epoch(epoch, 4)
        clock[0] += 2.0 + (3.0 if epoch == 5 else 0.0)  # epoch 5 runs the monitor for 3 s after its 2 s
        monitor = {"monitor_knn": 45.2, "monitor_knn_many": 60.1, "monitor_knn_medium": 40.25,
                   "monitor_knn_few": None, "monitor_seconds": 3.0} if epoch == 5 else {}
        progress.end_epoch({"epoch": epoch, **base, **monitor})
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "epoch 1/10 step 2/4: loss 4.6000, 300 img/s, ETA 19s to epoch 10"
    assert lines[1].endswith("2.0 s; ETA 18s to epoch 10")  # 9 epochs of 2 s; no monitor time measured yet
    assert lines[-1] == ("epoch 5/10: loss 4.5000, 300 img/s, lr 0.1, 2.0 s, held-out kNN@1 45.20 "
                         "(many 60.10, medium 40.25, few -); ETA 13s to epoch 10")  # 5 x 2 s + one monitor of 3 s


def test_progress_eta_targets_the_epoch_the_command_stops_at(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    progress = Progress(False, 200, last_epoch=50)  # --until-epoch 50 of a 200-epoch schedule
    progress.start_epoch(10, 5)
    clock[0] = 1.0
    progress.end_epoch({"epoch": 10})
    assert progress.eta() == 40.0 and progress.eta_text() == "ETA 40s to epoch 50"
