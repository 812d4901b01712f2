"""`linear-eval --protocol supcon | finetune | lotar` end to end on tiny digits runs: the lists each trains on, the rows
and records of the reports, SelfCon's sub-network classifier and ensemble, and the recipes that name them."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fastlt.evaluate.protocol as protocol
from fastlt.cli import main
from fastlt.data.store import Store
from fastlt.errors import FastltError
from fastlt.recipe import find_recipe, load_recipe
from fastlt.checkpoint import load_checkpoint
from fastlt.train.trainer import pretrain


def one_epoch_run(tmp_path_factory, store: Path, recipe: str, width: int) -> Path:
    """One epoch of a shipped digits recipe, narrow and quick."""
    out = tmp_path_factory.mktemp(f"{recipe.replace('/', '-')}-width{width}")
    return pretrain(load_recipe(find_recipe(recipe), [
        f"data.store={store}", f"train.out_dir={out}", "train.epochs=1", "train.name=tiny", f"model.width={width}",
        "model.projector_hidden=32", "model.projector_out=16", "train.batch_size=64", "train.progress=false",
        "train.precision=fp32", "train.device=cpu", "optim.warmup_epochs=1"]))


@pytest.fixture(scope="module")
def selfcon_run(tmp_path_factory, digits_store) -> Path:
    return one_epoch_run(tmp_path_factory, digits_store, "digits_lt/selfcon", width=4)


@pytest.fixture(scope="module")
def width8_run(tmp_path_factory, digits_store) -> Path:
    """For the protocol that trains the whole network: with 4 channels, oneDNN's AVX2 convolution backward crashed
    the process (a segfault with one torch thread, ONEDNN_MAX_CPU_ISA=AVX2)."""
    return one_epoch_run(tmp_path_factory, digits_store, "digits_lt/simclr", width=8)


def report(folder: Path) -> dict:
    return json.loads((folder / "eval.json").read_text())


def test_supcon_protocol_reports_the_best_test_epoch(tiny_run, tmp_path):
    result = protocol.linear_eval(tiny_run, tmp_path, overrides={
        "protocol": "supcon", "supcon_epochs": 3, "supcon_decay_epochs": [2], "supcon_batch_size": 256})
    folder = result.folders["supcon:full"]
    assert folder.name == "supcon-linear-all-train" and list(result.reports["supcon:full"]) == ["linear"]
    record = report(folder)
    assert record["protocol"]["name"] == "supcon-linear"
    assert record["protocol"]["classifier"]["lr"] == 3.0 and record["protocol"]["classifier"]["size"] == 32
    history = record["fc"]["linear"]["test_accuracy"]
    assert len(history) == 3 and record["reports"]["linear"]["overall"] == pytest.approx(max(history), abs=0.01)
    assert history[record["fc"]["linear"]["best_epoch"] - 1] == max(history)
    assert "SupCon / SelfCon linear evaluation (main_linear.py) (full-shot)" in (folder / "eval.md").read_text()


def test_supcon_protocol_on_selfcon_adds_the_sub_network_and_the_ensemble(selfcon_run, tmp_path):
    overrides = {"protocol": "supcon", "supcon_epochs": 2, "supcon_batch_size": 256}
    result = protocol.linear_eval(selfcon_run, tmp_path / "a", overrides=overrides)
    rows = result.reports["supcon:full"]
    assert list(rows) == ["linear", "sub-network linear", "ensemble linear"]
    record = report(result.folders["supcon:full"])
    for name, row in rows.items():  # each row at its own best epoch
        assert row["overall"] == pytest.approx(max(record["fc"][name]["test_accuracy"]), abs=0.01)
    alone = protocol.linear_eval(selfcon_run, tmp_path / "b", overrides={**overrides, "supcon_subnet": False,
                                                                       "supcon_epochs": 1})
    assert list(alone.reports["supcon:full"]) == ["linear"]


def test_finetune_protocol_never_trains_on_the_held_out_list_that_picks_its_epoch(width8_run, tmp_path):
    result = protocol.linear_eval(width8_run, tmp_path, overrides={
        "protocol": "finetune", "finetune_epochs": 1, "finetune_batch_size": 512, "finetune_select": "held-out"})
    record = report(result.folders["finetune:full"])
    assert list(result.reports["finetune:full"]) == ["finetune"] and record["protocol"]["name"] == "finetune"
    assert record["fc"]["epochs_run"] == record["fc"]["best_epoch"] == 1
    recorded = load_checkpoint(width8_run / "checkpoints" / "last.pt")["recipe"]
    store = Store.open(Path(recorded["data"]["store"]))
    held_out = record["protocol"]["held_out"]["samples"]  # the digits: the samples outside the split
    assert held_out > 0 and record["probe_lists"][0]["samples"] == len(store.part("train").labels) - held_out
    # so the network trains on the split, and the report and its folder name it
    split = recorded["data"]["split"]
    assert record["probe_lists"][0]["file"] == split and record["protocol"]["held_out"]["file"] == \
        f"(the train part outside {split})"
    assert result.folders["finetune:full"].name == "finetune-ratio10_seed1"
    assert "FlatCLR fine-tuning (fine_tune.py) (full-shot)" in (result.folders["finetune:full"] / "eval.md").read_text()


def test_lotar_protocol_trains_on_the_whole_part_and_reports_its_own_groups(tiny_run, tmp_path):
    result = protocol.linear_eval(tiny_run, tmp_path, overrides={"protocol": "lotar", "lotar_epochs": 1})
    folder = result.folders["lotar:full"]
    record = report(folder)
    assert folder.name == "lotar-linear-all-train" and record["protocol"]["fc"]["stem"] == "unpadded"
    payload = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    labels = np.asarray(Store.open(Path(payload["recipe"]["data"]["store"])).part("train").labels)
    counts = np.bincount(labels[np.load(payload["recipe"]["data"]["split"])], minlength=10)
    ranked = sorted(range(10), key=lambda c: -counts[c])  # stable: ties in class order
    assert record["fc"]["groups"] == {"many": sorted(ranked[:3]), "medium": sorted(ranked[3:7]),
                                      "few": sorted(ranked[7:])}
    row = record["reports"]["linear"]
    per_class = np.array(row["per_class"])
    assert row["few"] == pytest.approx(per_class[sorted(ranked[7:])].mean())
    assert "fastlt's analogue" in (folder / "eval.md").read_text()  # the digits are not CIFAR-10
    assert record["probe_lists"][0]["samples"] == len(labels)


def test_the_cli_passes_protocol_and_subnet_and_all_leaves_the_separate_protocols_out(tiny_run, tmp_path,
                                                                                    monkeypatch):
    seen = {}

    def fake(target, out, device, store, overrides, *args):
        seen.update(overrides)
        return protocol.EvalResult({}, {}, "")

    monkeypatch.setattr(protocol, "linear_eval", fake)
    result = CliRunner().invoke(main, ["linear-eval", str(tiny_run), "--device", "cpu", "--protocol", "supcon",
                                       "--no-subnet"])
    assert result.exit_code == 0, result.output
    assert seen == {"protocol": "supcon", "supcon_subnet": False}
    monkeypatch.undo()
    bad = CliRunner().invoke(main, ["linear-eval", str(tiny_run), "--out", str(tmp_path), "--device", "cpu",
                                    "--protocol", "linear"])
    assert bad.exit_code == 2  # a usage error: --protocol takes the recipe's names only
    assert "Invalid value for '--protocol': 'linear' is not one of 'bcl', 'sdclr', 'ts', 'all', 'supcon', " \
           "'finetune', 'lotar'" in bad.output
    assert set(protocol.EVAL_PROTOCOLS) == {"bcl", "sdclr", "ts"}  # what "all" runs


@pytest.mark.parametrize("data_set", ["cifar10_lt", "cifar100_lt", "imagenet100_lt", "digits_lt"])
def test_supcon_and_selfcon_recipes_evaluate_with_their_references_protocol(data_set):
    for name in ("supcon", "selfcon", "selfcon-su", "selfcon-m", "selfcon-mu"):
        recipe = load_recipe(find_recipe(f"{data_set}/{name}"))
        assert recipe.eval.protocol == "supcon" and recipe.method.name == name
        settings = (recipe.eval.supcon_lr, recipe.eval.supcon_epochs, tuple(recipe.eval.supcon_decay_epochs),
                    recipe.eval.supcon_decay_rate, recipe.eval.supcon_batch_size, recipe.eval.supcon_weight_decay)
        # SelfCon's scripts: CIFAR selfcon_represent.sh / supcon_represent.sh; ImageNet selfcon_represent_imagenet.sh
        assert settings == ((5.0, 40, (20, 30), 0.1, 512, 0.0) if data_set == "imagenet100_lt" else
                            (3.0, 100, (60, 80), 0.1, 512, 0.0))
    with pytest.raises(FastltError):
        load_recipe(find_recipe(f"{data_set}/supcon"), ["eval.supcon_decay_epochs=[0]"])
