"""The command line end to end on tiny data, its progress output, and one-line errors for every bad input."""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fastlt.cli import main
from fastlt.data.sources import read_cifar
from fastlt.data.splits import split_checksum
from fastlt.data.store import Store, StorePart, write_native_store
import fastlt.evaluate.protocol as protocol
from fastlt.evaluate.protocol import linear_eval
from fastlt.files import file_digest

from conftest import TINY_PRETRAIN

ROOT = Path(__file__).resolve().parents[1]
DIGITS_RECIPE = ROOT / "pipelines" / "digits_lt" / "simclr.toml"
TINY = TINY_PRETRAIN


def run(*args, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


USER_ERROR, USAGE_ERROR = 1, 2  # a FastltError (fastlt.errors); click's usage errors (a malformed command line)


def assert_one_line_error(result, *fragments: str, status: int = USER_ERROR) -> None:
    assert result.exit_code == status, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def stores(tmp_path_factory, digits_store, cifar10_tarball, cifar100_tarball, cifar_train_labels) -> dict[str, Path]:
    """digits, tiny CIFAR-10 / CIFAR-100 stores, and a CIFAR-100 store with the true labels (1x1 images)."""
    folder = tmp_path_factory.mktemp("cli_stores")
    made = {"digits": digits_store}
    for name, tarball in (("cifar10", cifar10_tarball), ("cifar100", cifar100_tarball)):
        parts, class_names = read_cifar(tarball, name)
        made[name] = write_native_store(folder / name, name, class_names, parts, {"dataset": name})
    labels = np.load(cifar_train_labels)["c100"].astype(np.int64)
    made["c100_labels"] = write_native_store(folder / "c100_labels", "cifar100", [str(c) for c in range(100)],
                                             {"train": StorePart(np.zeros((len(labels), 1, 1, 3), np.uint8), labels)},
                                             {"dataset": "labels only"})
    # A val list that leaves class 0 only 30 images: the val list is drawn, then the eval list fails.
    starved = np.concatenate([np.flatnonzero(labels == c)[: 470 if c == 0 else 50] for c in range(100)])
    np.save(folder / "starving_val.npy", starved)
    made["starving_val"] = folder / "starving_val.npy"
    return made


def test_convert_cifar_and_digits(tmp_path, cifar10_tarball):
    result = run("convert", "cifar10", "--source", cifar10_tarball, "--out", tmp_path / "c10")
    assert "train" in result.output and (tmp_path / "c10" / "meta.json").is_file()
    run("convert", "digits", "--out", tmp_path / "digits")
    meta = json.loads((tmp_path / "digits" / "meta.json").read_text())
    assert meta["num_classes"] == 10 and meta["parts"]["train"]["count"] > 1000


def test_convert_corrupt_tarball_leaves_nothing(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    result = run("convert", "cifar10", "--source", bad, "--out", tmp_path / "out", ok=False)
    assert_one_line_error(result, str(bad))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == [bad.name]


def test_splits_digits(tmp_path, digits_store):
    run("splits", "digits", "--store", digits_store, "--ratio", "5", "--seed", "3", "--out", tmp_path / "lt.npy")
    manifest = json.loads((tmp_path / "lt.json").read_text())
    counts = manifest["class_counts"]
    assert max(counts) / min(counts) == pytest.approx(5, rel=0.15)
    assert len(np.load(tmp_path / "lt.npy")) == sum(counts)


def test_pretrain_reports_progress_as_plain_lines_when_not_a_terminal(tmp_path, digits_store):
    result = run("pretrain", "digits_lt/simclr", "--set", f"data.store={digits_store}",
                 "--set", f"train.out_dir={tmp_path}", "--set", "train.epochs=2", *TINY,
                 "--set", "train.progress=true", "--set", "train.log_every=5")
    assert "\r" not in result.stderr
    epochs = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert any(line.startswith("epoch 1/2 step 5/8: loss ") for line in epochs)
    summaries = [line for line in epochs if " step " not in line]
    assert len(summaries) == 2 and all("img/s" in line and "loss" in line for line in summaries)
    assert result.stdout.strip().splitlines() == [str(tmp_path / Path(result.stdout.strip()).name)]


def test_a_shipped_recipe_runs_by_name_from_any_folder(tmp_path, digits_store, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's split path is relative to the recipe, not to here
    result = run("pretrain", "digits_lt/simclr", "--set", f"data.store={digits_store}",
                 "--set", "train.out_dir=runs", "--set", "train.epochs=1", *TINY)
    run_dir = Path(result.stdout.strip())
    config = json.loads((tmp_path / run_dir / "config.json").read_text())
    assert Path(config["data"]["split"]) == ROOT / "splits" / "digits_lt" / "ratio10_seed1.npy"
    assert run_dir.parent == Path("runs")  # out_dir stays relative to the current folder


def test_linear_eval_writes_report_with_groups_and_random_baseline(tiny_run, tmp_path):
    result = run("linear-eval", tiny_run, "--epochs", "3", "--knn", "1", "--random-init", "--device", "cpu",
                 "--out", tmp_path / "eval")
    assert "| linear |" in result.output and "| random-init linear |" in result.output
    folder = tmp_path / "eval" / "bcl-linear-all-train"  # digits_lt/simclr probes on the whole train part
    report = json.loads((folder / "eval.json").read_text())
    assert set(report["reports"]) == {"linear", "knn@1", "random-init linear", "random-init knn@1"}
    linear = report["reports"]["linear"]
    assert {"overall", "many", "medium", "few", "per_class", "class_std", "group_std"} <= set(linear)
    assert linear["group_std"] == pytest.approx(np.std([linear["many"], linear["medium"], linear["few"]]))
    assert len(linear["per_class"]) == 10
    assert sorted(sum(report["groups"].values(), [])) == list(range(10))
    assert [len(report["groups"][g]) for g in ("many", "medium", "few")] == [4, 3, 3]
    assert (folder / "eval.md").read_text().count("|") > 20


def test_linear_eval_report_says_what_it_measured_and_is_not_overwritten(tiny_run):
    checkpoint = tiny_run / "checkpoints" / "last.pt"
    run("linear-eval", tiny_run, "--epochs", "2", "--knn", "1", "--device", "cpu", "--precision", "fp32")
    folder = tiny_run / "eval" / "bcl-linear-all-train"
    report = json.loads((folder / "eval.json").read_text())
    split = json.loads((tiny_run / "config.json").read_text())["data"]["split"]
    assert report["run"] == str(tiny_run) and report["method"] == "simclr" and report["epoch"] == 1
    assert report["checkpoint"] == {"file": str(checkpoint), "sha256": file_digest(checkpoint)}
    assert report["pretraining_split"] == {"file": split, "sha256": split_checksum(np.load(split)), "samples": 468}
    assert report["probe_lists"][0]["file"] == "(the whole train part)" and report["probe_lists"][0]["samples"] == 1198
    assert report["feature_precision"] == "fp32" and report["shots"] == "full"
    assert report["protocol"]["name"] == "bcl-linear" and report["protocol"]["linear"]["epochs"] == 2
    markdown = (folder / "eval.md").read_text()
    assert markdown.startswith(f"# {tiny_run.name}: simclr, epoch 1, BCL linear probe (full-shot)")
    assert file_digest(checkpoint) in markdown
    before = (folder / "eval.json").read_bytes()
    again = run("linear-eval", tiny_run, "--epochs", "3", "--device", "cpu", ok=False)
    assert_one_line_error(again, f"{folder}: exists already; pass --overwrite to replace it")
    assert (folder / "eval.json").read_bytes() == before
    run("linear-eval", tiny_run, "--epochs", "3", "--knn", "1", "--device", "cpu", "--overwrite")
    assert json.loads((folder / "eval.json").read_text())["protocol"]["linear"]["epochs"] == 3
    copy = tiny_run / "checkpoints" / "epoch1.pt"
    copy.write_bytes(checkpoint.read_bytes())
    run("linear-eval", copy, "--epochs", "2", "--knn", "1", "--device", "cpu")
    assert (tiny_run / "eval" / "bcl-linear-all-train-epoch1" / "eval.json").is_file()  # beside the run's others
    assert not [p for p in (tiny_run / "eval").iterdir() if p.name.startswith(".")]  # no partial folders left


def test_few_shot_is_the_mean_and_std_over_subsets_each_a_probe_on_its_list(tiny_run, tmp_path, monkeypatch):
    store = Store.open(Path(json.loads((tiny_run / "config.json").read_text())["data"]["store"]))
    labels = np.asarray(store.part("train").labels)
    rng = np.random.default_rng(0)
    for subset in (1, 2, 3):
        chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), 5, replace=False) for c in range(10)])
        np.save(tmp_path / f"sub{subset}_5shot.npy", chosen)
    settings = {"epochs": 100, "knn": (1,), "shot_lists": str(tmp_path / "sub{subset}_{shots}shot.npy"), "shot_subsets": 3}
    result = linear_eval(tiny_run, tmp_path / "reports", overrides=settings, shots=("full", "5"))
    few = result.reports["bcl:5"]["linear, 5-shot"]
    assert result.folders["bcl:5"] == tmp_path / "reports" / "bcl-linear-5shot"
    for k, subset in enumerate(few["per_subset"], start=1):  # subset k = a full-shot probe on list k
        alone = linear_eval(tiny_run, tmp_path / f"alone{k}", overrides={**settings, "train_split":
                            str(tmp_path / f"sub{k}_5shot.npy")}).reports["bcl:full"]["linear"]
        assert subset == alone
    for key in ("overall", "many", "medium", "few", "group_std", "class_std"):
        values = [subset[key] for subset in few["per_subset"]]
        assert few[key] == pytest.approx(np.mean(values)) and few["std_over_subsets"][key] == pytest.approx(np.std(values))
    assert len({subset["overall"] for subset in few["per_subset"]}) > 1  # the subsets differ
    recorded = json.loads((result.folders["bcl:5"] / "eval.json").read_text())["probe_lists"]
    assert [entry["file"] for entry in recorded] == [str(tmp_path / f"sub{k}_5shot.npy") for k in (1, 2, 3)]
    assert "+-" in (result.folders["bcl:5"] / "eval.md").read_text()
    drawn = []
    monkeypatch.setattr(protocol, "per_class_accuracy_plot", lambda per_class, *rest: drawn.append(per_class))
    linear_eval(tiny_run, tmp_path / "again", overrides=settings, shots=("5",))
    assert drawn == [[pytest.approx(np.mean(values)) for values in zip(*[s["per_class"] for s in few["per_subset"]])]]


def test_linear_eval_of_a_self_damaging_run(tmp_path, digits_store):
    recipe = ROOT / "pipelines" / "digits_lt" / "bcl-d.toml"
    result = run("pretrain", recipe, "--set", f"data.store={digits_store}", "--set", f"train.out_dir={tmp_path}",
                 "--set", "train.epochs=1", "--set", "train.name=bcl-d", *TINY)
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    evaluation = run("linear-eval", run_dir, "--epochs", "2", "--knn", "", "--device", "cpu")
    assert "| linear |" in evaluation.output and (run_dir / "eval" / "bcl-linear-all-train" / "eval.json").is_file()


def test_linear_eval_refuses_other_architectures_and_non_checkpoints(tiny_run, tmp_path):
    checkpoint = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    checkpoint["recipe"]["model"]["width"] = 8  # the weights are for width 4
    other = tmp_path / "other.pt"
    torch.save(checkpoint, other)
    assert_one_line_error(run("linear-eval", other, "--device", "cpu", ok=False), str(other), "different model")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert_one_line_error(run("linear-eval", junk, ok=False), str(junk), "not a readable checkpoint")
    assert_one_line_error(run("linear-eval", tmp_path / "nothing", ok=False), "not found")


def test_resume_in_a_new_process_equals_an_uninterrupted_run(tmp_path, digits_store):
    def fastlt(*args):
        command = [sys.executable, "-m", "fastlt", *map(str, args)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result

    common = ["--set", f"data.store={digits_store}", "--set", f"train.out_dir={tmp_path}", "--set", "train.epochs=2",
              *TINY]
    fastlt("pretrain", "digits_lt/bcl-i", *common, "--set", "train.name=full")
    fastlt("pretrain", "digits_lt/bcl-i", *common, "--set", "train.name=half", "--until-epoch", "1")
    resumed = fastlt("pretrain", "--resume", tmp_path / "half")
    assert "resuming at epoch 2 of 2" in resumed.stderr and resumed.stdout.strip() == str(tmp_path / "half")
    full, half = (torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True) for name in ("full", "half"))
    assert full["step"] == half["step"] == 16  # 8 steps an epoch on digits-LT (468 images, the last batch kept)
    assert full["model"].keys() == half["model"].keys()
    assert all(torch.equal(value, half["model"][key]) for key, value in full["model"].items())
    untimed = [[{key: value for key, value in json.loads(line).items() if not key.endswith(("seconds", "second"))}
                for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()] for name in ("full", "half")]
    assert [line["epoch"] for line in untimed[1]] == [1, 2]
    assert untimed[1] == untimed[0]  # each epoch's loss (and lr, step, BCL's statistics) exactly as uninterrupted
    assert fastlt("pretrain", "--resume", tmp_path / "half").stderr.strip().endswith("run already complete (epoch 2 of 2)")


def test_info_reports_the_automatic_choices():
    report = json.loads(run("info").output)
    assert {"versions", "devices", "cpu", "auto", "installed_extras"} <= set(report)
    assert report["devices"][0] == "cpu" and report["auto"]["cpu"]["precision"] in ("bf16", "fp32")


def test_splits_cifar_from_a_store_reproduces_the_shipped_files(tmp_path, reference_splits, stores):
    # The true CIFAR-100 train labels with 1x1 images stand in for the converted data set:
    # split generation reads only the labels.
    run("splits", "cifar", "cifar100", "--store", stores["c100_labels"], "--out", tmp_path / "splits", "--split-ids", "1")
    shipped = ROOT / "splits" / "cifar100_lt"
    for name in ("split1_D_i.npy", "split1_D_b.npy", "split1_S_b.npy", "train_idx.npy", "val_idx.npy"):
        assert (tmp_path / "splits" / name).read_bytes() == (shipped / name).read_bytes(), name
    published_val = reference_splits / "sdclr" / "cifar100" / "cifar100_valIdxList.npy"
    run("splits", "cifar", "cifar100", "--store", stores["c100_labels"], "--out", tmp_path / "sdclr_pool",
        "--split-ids", "1", "--val-list", published_val)
    assert np.array_equal(np.load(tmp_path / "sdclr_pool" / "val_idx.npy"), np.load(published_val))


PRETRAIN = "pretrain {recipe}"
TAKEN = "exists already; pass --overwrite to replace it"
# (command, exit status, what the one line says): 2 (USAGE_ERROR) where click rejects the command line itself (an
# option's type or range), 1 (USER_ERROR) for every check of fastlt's own (values, files, options that clash).
BAD_INPUTS = [
    # splits
    ("splits cifar cifar100 --store {c100_labels} --out {out} --split-ids a", 2, "Invalid value for '--split-ids'"),
    ("splits cifar cifar100 --store {c100_labels} --out {out} --split-ids 0", 2, "Invalid value for '--split-ids'"),
    ("splits cifar cifar100 --store {c100_labels} --out {out} --val-list {starving_val}", 1, "class 0 has 30 samples"),
    ("splits cifar cifar10 --store {cifar100} --out {out}", 1, "a store of 'cifar100', not of 'cifar10'"),
    ("splits digits --store {cifar10} --out {out}/lt.npy", 1, "a store of 'cifar10', not of 'digits'"),
    ("splits digits --store {digits} --out {out}/lt.npy --ratio 0.5", 2, "Invalid value for '--ratio'"),
    ("splits digits --store {digits} --out {out}/lt.npy --ratio 1000", 1,
     "--ratio 1000: the split leaves classes 3, 6, 9 without a sample"),
    ("splits digits --store {digits} --out {taken}/lt.npy", 1, f"lt.npy: {TAKEN}"),
    ("splits digits --store {digits} --out {taken}/manifest_only.npy", 1, f"manifest_only.json: {TAKEN}"),
    ("splits cifar cifar100 --store {c100_labels} --out {taken} --split-ids 1", 1, f"val_idx.npy: {TAKEN}"),
    # pretrain: recipe values, checked before anything is written
    (PRETRAIN + " --set train.log_every=0", 1, "--set train.log_every=0: train.log_every: must be >= 1, got 0"),
    (PRETRAIN + " --set train.epochs=0", 1, "train.epochs: must be >= 1"),
    (PRETRAIN + " --set optim.lr=-0.1", 1, "optim.lr: must be > 0"),
    (PRETRAIN + " --set optim.final_lr=1.0", 1, "optim.final_lr: must not exceed optim.lr"),
    (PRETRAIN + " --set method.temperature=0", 1, "method.temperature: must be > 0"),
    (PRETRAIN + " --set method.pruning_ratio=1.0", 1, "method.pruning_ratio: must be in [0, 1)"),
    (PRETRAIN + " --set train.batch_size=1", 1, "train.batch_size: must be >= 2"),
    (PRETRAIN + " --set train.checkpoint_every=-1", 1, "train.checkpoint_every: must be >= 0"),
    (PRETRAIN + " --set train.checkpoint_minutes=nan", 1, "train.checkpoint_minutes: must be >= 0"),
    (PRETRAIN + " --set train.precision=bf17", 1, "train.precision: must be one of auto, bf16, fp16, fp32"),
    (PRETRAIN + " --set train.memory_format=nhwc", 1, "train.memory_format: must be one of"),
    (PRETRAIN + " --set train.device=tpu", 1, "train.device"),
    (PRETRAIN + " --set eval.knn=[0]", 1, "eval.knn: must be a list of integers >= 1"),
    (PRETRAIN + " --set views.scale=[0.5,0.1]", 1, "views.scale"),
    (PRETRAIN + " --set train.epochs=ten", 1, "--set train.epochs=ten: train.epochs: expected int"),
    (PRETRAIN + " --set trainepochs=3", 1, "expected section.key=value"),
    (PRETRAIN + " --set trian.epochs=3", 1, "--set trian.epochs=3: unknown section 'trian' (did you mean 'train'?)"),
    (PRETRAIN + " --set train.epoch=3", 1, "--set train.epoch=3: train.epoch: unknown key (did you mean 'epochs'?)"),
    (PRETRAIN + " --precision fp8", 1, "--precision fp8: train.precision: must be one of auto, bf16, fp16, fp32"),
    (PRETRAIN + " --device tpu", 2, "Invalid value for '--device': 'tpu'"),
    (PRETRAIN + " --device cuda", 1, "--device cuda: CUDA is not available on this machine"),
    (PRETRAIN + " --device cuda:1", 1, "--device cuda:1: CUDA is not available on this machine"),
    ("pretrain --resume {run} --device cuda", 1, "--device cuda: CUDA is not available on this machine"),
    (PRETRAIN + " --set method.name=byol", 1, "method.name: unknown method 'byol'"),
    (PRETRAIN + " --until-epoch 0", 2, "Invalid value for '--until-epoch'"),
    (PRETRAIN + " --split {out}/missing.npy", 1, "no such split file"),
    (PRETRAIN + " --resume {run}", 1, "give a RECIPE or --resume RUN_DIR, not both"),
    ("pretrain nope/nothing", 1, "no such recipe file or shipped recipe (`fastlt recipe list` shows the shipped"),
    ("pretrain digits_lt/simclrr", 1, "digits_lt/simclrr: no such recipe file or shipped recipe (did you mean "
                                      "'digits_lt/simclr', "),
    ("pretrain {out}/nothing.toml", 1, "recipe file not found"),
    # pretrain: data and recipe files
    (PRETRAIN + " --split {out_of_range}", 1, "out_of_range.npy: index 5000 outside [0, 1198)"),
    (PRETRAIN + " --split {duplicated}", 1, "duplicated.npy: index 3 appears more than once"),
    (PRETRAIN + " --split {text_file}", 1, "text.txt: not a readable .npy index file"),
    (PRETRAIN + " --split {missing_class}", 1, "missing_class.npy: class 7 has no sample in the split"),
    (PRETRAIN + " --set train.batch_size=5000", 1, "train.batch_size 5000: larger than the 468 samples of the split"),
    (PRETRAIN + " --set data.store={out}/nostore", 1, "nostore: no such store folder"),
    (PRETRAIN + " --set data.store={ilsvrc}", 1, "not a fastlt store (no meta.json)"),
    (PRETRAIN + " --set data.store={truncated_dali}", 1, "train_jpeg.bin: does not match its offsets"),
    ("pretrain {bad_toml}", 1, "bad.toml: not valid TOML"),
    ("pretrain {wrong_type_toml}", 1, "wrong_type.toml: train.epochs: expected int"),
    # resume: the run's history cannot change
    ("pretrain --resume {out}/no-run", 1, "checkpoint not found"),
    ("pretrain --resume {run} --set optim.lr=0.3", 1, "optim.lr = 0.3 would change a run trained with 0.1"),
    ("pretrain --resume {run} --set model.width=8", 1, "model.width = 8 would change"),
    ("pretrain --resume {run} --set train.epochs=3 --until-epoch 1", 1, "has completed 1 epochs already"),
    ("pretrain --resume {run} --set train.batch_size=32", 1,
     "train.batch_size = 32 would change a run trained with 64"),
    ("pretrain --resume {run} --set train.epochs=2 --set data.split={duplicated}", 1,
     "duplicated.npy: index 3 appears more than once"),
    ("pretrain --resume {run} --set train.epochs=2 --set data.split={changed_split}", 1,
     "the split indices differ from what the run trained on"),
    # linear-eval
    ("linear-eval {run} --knn a", 2, "Invalid value for '--knn'"),
    ("linear-eval {run} --shots 0", 2, "Invalid value for '--shots'"),
    ("linear-eval {run} --shots ,", 2, "Invalid value for '--shots'"),
    ("linear-eval {run} --shots 100 --device cpu", 1, "--shots 100: the recipe names no few-shot lists"),
    ("linear-eval {run} --knn 0", 2, "Invalid value for '--knn'"),
    ("linear-eval {run} --knn 5000 --device cpu", 1, "knn k = 5000: larger than the 1198 samples"),
    ("linear-eval {run} --epochs 0", 2, "Invalid value for '--epochs'"),
    ("linear-eval {run} --store {cifar10}", 1, "the data set differ from what the run trained on ('digits' then"),
    ("linear-eval {run} --precision bf17", 1, "--precision bf17: unknown precision (expected one of auto, bf16"),
    ("linear-eval {run} --device tpu", 2, "Invalid value for '--device': 'tpu': expected auto, cpu, cuda or cuda:N"),
    ("linear-eval {run} --device cuda:x", 2, "Invalid value for '--device': 'cuda:x'"),
    ("linear-eval {run} --device cuda", 1, "--device cuda: CUDA is not available on this machine"),
    ("linear-eval {run} --protocol bcll", 2, "Invalid value for '--protocol': 'bcll' is not one of 'bcl', 'sdclr'"),
    ("linear-eval {run} --exit head", 2, "Invalid value for '--exit': 'head' is not one of 'backbone'"),
    ("linear-eval {run} --probe-split {out}/missing.npy --device cpu", 1, "no such split file"),
    ("linear-eval {incompatible} --device cpu", 1, "incompatible.pt: checkpoint is for a different model"),
    ("linear-eval {text_file} --device cpu", 1, "text.txt: not a readable checkpoint"),
    ("linear-eval {run} --probe-split {missing_class} --device cpu", 1,
     "missing_class.npy: no sample of class 7 ('7'); every class needs at least one"),
    ("linear-eval {run} --probe-split {out_of_range} --device cpu", 1, "index 5000 outside [0, 1198)"),
    ("linear-eval {run} --out {taken} --device cpu", 1, f"bcl-linear-all-train: {TAKEN}"),
    # convert
    ("convert cifar10 --source {out}/x.tar.gz --download --out {out}/c10", 1,
     "exactly one of --source PATH or --download"),
    ("convert cifar10 --source {out}/missing.tar.gz --out {out}/c10", 1, "missing.tar.gz"),
    ("convert digits --source {out}/x --out {out}/d", 1, "--source/--download do not apply"),
    ("convert cifar10 --source {truncated_tarball} --out {out}/c10", 1, "truncated.tar.gz: "),
    ("convert cifar10 --source {text_file} --out {out}/c10", 1, "text.txt: "),
    ("convert folder --root {corrupt_jpegs} --size 16 --out {out}/f", 1, "n002_0.JPEG: cannot decode"),
    ("convert folder --root {out}/nowhere --out {out}/f", 1, "nowhere: no such folder"),
    ("convert imagenet100-lt --root {ilsvrc} --list lt={unknown_paths} --size 16 --out {out}/i", 1,
     "nothere.JPEG: listed for part 'train' but not found"),
    ("convert digits --format ffcv2 --out {out}/d", 2, "Invalid value for '--format'"),
    ("convert digits --out {taken}", 1, "taken: exists and is not a fastlt store; it will not be replaced"),
    ("convert digits --out {taken} --overwrite", 1, "taken: exists and is not a fastlt store; it will not be"),
    ("convert digits --out {digits}", 1, f"digits: {TAKEN}"),  # a store: --overwrite replaces it
    # export, and the other commands that read runs
    ("export {out}/no-run --out {out}/x.pt", 1, "checkpoint not found"),
    ("export {text_file} --out {out}/x.pt", 1, "text.txt: not a readable checkpoint"),
    ("compare {out}/no-run", 1, "no-run"),
    ("plot {out}/no-run --out {out}/plots", 1, "no-run"),
    ("reproduce cifar10 --store {out}/nostore", 1, "nostore: not a fastlt store"),
    ("reproduce cifar10 --store {cifar10} --out {out}/r --precision fp8", 1,
     "--precision fp8: train.precision: must be one of auto, bf16, fp16, fp32, got 'fp8'"),
    ("reproduce cifar10 --store {cifar10} --out {out}/r --devices gpu", 1,
     "--devices gpu: 'gpu' is not a CUDA device (cuda:N, or auto)"),
    ("reproduce cifar10 --store {cifar10} --out {out}/r --devices cuda:0", 1,
     "--devices cuda:0: no device cuda:0 (this machine has 0 CUDA devices)"),
    ("bench train --device cuda:", 2, "Invalid value for '--device': 'cuda:'"),
    ("bench train --device cuda", 1, "--device cuda: CUDA is not available on this machine"),
    ("bench views --no-bcl --device cuda", 1, "--device cuda: CUDA is not available on this machine"),
    ("bench loader --store {digits} --device cuda", 1, "--device cuda: CUDA is not available on this machine"),
    ("bench linear-eval {run} --device cuda", 1, "--device cuda: CUDA is not available on this machine"),
    ("bench loader --store {digits} --device cpu:0", 2, "Invalid value for '--device': 'cpu:0'"),
    ("recipe show nope/nothing", 1, "no such recipe file or shipped recipe"),
    ("bench loader --store {out}/nostore", 1, "nostore: no such store folder"),
    # an existing file or folder the user named, refused before any work unless --overwrite
    ("export {run} --out {taken}/x.pt", 1, f"x.pt: {TAKEN}"),
    ("compare {run} --csv {taken}/x.csv", 1, f"x.csv: {TAKEN}"),
    ("compare {run} --csv {out}/new.csv --md {taken}/x.md", 1, f"x.md: {TAKEN}"),
    ("plot {run} --out {taken}", 1, f"loss.png: {TAKEN}"),
    ("bench loader --store {digits} --out {taken}/x.json", 1, f"x.json: {TAKEN}"),
    ("bench views --out {taken}/x.json", 1, f"x.json: {TAKEN}"),
    ("bench train --out {taken}/x.json", 1, f"x.json: {TAKEN}"),
    ("bench linear-eval {run} --out {taken}/x.json", 1, f"x.json: {TAKEN}"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_run, ilsvrc, cifar10_tarball, digits_store) -> dict[str, Path]:
    """Damaged, malformed and mismatched inputs, each made from a good one."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    made = {"text_file": folder / "text.txt", "ilsvrc": ilsvrc}
    made["text_file"].write_text("not what was asked for\n")
    made["truncated_tarball"] = folder / "truncated.tar.gz"
    made["truncated_tarball"].write_bytes(cifar10_tarball.read_bytes()[:2000])
    for name, indices in (("out_of_range", [0, 1, 5000]), ("duplicated", [0, 3, 3])):
        made[name] = folder / f"{name}.npy"
        np.save(made[name], np.asarray(indices, dtype=np.int64))
    made["missing_class"] = folder / "missing_class.npy"
    np.save(made["missing_class"], np.flatnonzero(Store.open(digits_store).labels("train") != 7))
    made["changed_split"] = folder / "changed_split.npy"
    np.save(made["changed_split"], np.arange(0, 1198, 2))
    (folder / "bad.toml").write_text("[train\nepochs = 1\n")
    (folder / "wrong_type.toml").write_text("[train]\nepochs = 'two'\n")
    made["bad_toml"], made["wrong_type_toml"] = folder / "bad.toml", folder / "wrong_type.toml"
    corrupt = folder / "corrupt_jpegs"
    shutil.copytree(ilsvrc / "train", corrupt)
    damaged = corrupt / "n002" / "n002_0.JPEG"
    damaged.write_bytes(damaged.read_bytes()[:300])
    made["corrupt_jpegs"] = corrupt
    made["unknown_paths"] = folder / "unknown.txt"
    made["unknown_paths"].write_text("train/n001/n001_0.JPEG 0\ntrain/n001/nothere.JPEG 0\n")
    checkpoint = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    checkpoint["recipe"]["model"]["width"] = 8  # weights of width 4 under a recipe of width 8
    made["incompatible"] = folder / "incompatible.pt"
    torch.save(checkpoint, made["incompatible"])
    made["truncated_dali"] = folder / "dali"
    run("convert", "digits", "--format", "dali", "--out", made["truncated_dali"])
    blob = made["truncated_dali"] / "train_jpeg.bin"
    blob.write_bytes(blob.read_bytes()[:-100])
    made["taken"] = folder / "taken"  # a file or folder of the name each writer would write
    (made["taken"] / "bcl-linear-all-train").mkdir(parents=True)
    for name in ("lt.npy", "manifest_only.json", "val_idx.npy", "loss.png", "x.pt", "x.csv", "x.md", "x.json"):
        (made["taken"] / name).write_text("a user's file\n")
    return made


@pytest.mark.parametrize("command, status, fragment", BAD_INPUTS,
                         ids=[row[0].replace(" ", "_")[:60] for row in BAD_INPUTS])
def test_bad_input_is_one_line_and_writes_nothing(command, status, fragment, tmp_path, tiny_run, stores, digits_store,
                                                  bad_files, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # each row as on a machine without CUDA
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'extends = "{DIGITS_RECIPE}"\n[data]\nstore = "{digits_store}"\n'
                      f'[train]\nout_dir = "{tmp_path / "out"}"\nepochs = 1\ndevice = "cpu"\n[optim]\nlr = 0.1\n')
    names = {**{name: str(path) for name, path in {**stores, **bad_files}.items()}, "run": str(tiny_run),
             "recipe": str(recipe), "out": str(tmp_path / "out")}
    before, taken = snapshot(tiny_run), snapshot(bad_files["taken"])
    result = run(*[word.format(**names) for word in command.split()], ok=False)
    assert_one_line_error(result, fragment, status=status)
    assert not (tmp_path / "out").exists()
    assert snapshot(tiny_run) == before and snapshot(bad_files["taken"]) == taken


# (command, a file it writes, under {out}): each writer run twice on the same outputs, the second time refused
# without --overwrite and done with it.
REWRITTEN = [
    ("splits digits --store {digits} --out {out}/lt.npy", "lt.json"),
    ("splits cifar cifar100 --store {c100_labels} --out {out} --split-ids 1", "split1_D_i.npy"),
    ("convert digits --out {out}/digits", "digits/meta.json"),
    ("linear-eval {run} --out {out} --epochs 1 --knn 1 --device cpu", "bcl-linear-all-train/eval.json"),
    ("compare {reports} --csv {out}/table.csv --md {out}/table.md", "table.md"),
    ("plot {run} --out {out}", "loss.png"),
    ("bench loader --store {digits} --batch 64 --batches 1 --repeats 1 --device cpu --out {out}/loader.json",
     "loader.json"),
]


@pytest.mark.parametrize("command, written", REWRITTEN, ids=[row[0].split(" {")[0].replace(" ", "_") for row in REWRITTEN])
def test_overwrite_replaces_what_was_refused(command, written, tmp_path, tiny_run, stores, digits_store):
    reports = tmp_path / "reports"
    if "{reports}" in command:
        run("linear-eval", tiny_run, "--out", reports, "--epochs", "1", "--knn", "1", "--device", "cpu")
    names = {**{name: str(path) for name, path in stores.items()}, "run": str(tiny_run), "reports": str(reports),
             "out": str(tmp_path / "out")}
    words = [word.format(**names) for word in command.split()]
    run(*words)
    path = tmp_path / "out" / written
    first = path.stat().st_ino
    assert_one_line_error(run(*words, ok=False), TAKEN)
    assert path.stat().st_ino == first
    run(*words, "--overwrite")
    assert path.stat().st_ino != first  # written anew: a complete new file renamed into place


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_written_follows_the_umask(umask, tmp_path, digits_store):
    """0644 under umask 022, 0640 under 027 (folders 0755 / 0750), the atomically written files as much as the
    appended ones, so that those the umask lets read a run (a lab's group) can read all of it."""
    labels = np.asarray(Store.open(digits_store).labels("train"))
    split = tmp_path / "one_per_class.npy"  # a width-64 ResNet-18 (exportable) trains in seconds on 10 images
    np.save(split, np.array([np.flatnonzero(labels == label)[0] for label in range(10)]))
    settings = [f"data.store={digits_store}", f"data.split={split}", f"train.out_dir={tmp_path / 'out' / 'runs'}",
                "train.epochs=1", "train.batch_size=5", "train.compile=off", "train.precision=fp32",
                "train.progress=false", "train.monitor_every=0", "optim.warmup_epochs=0", "model.width=64",
                "model.projector_hidden=16", "model.projector_out=8", "views.size=16"]
    out = tmp_path / "out"
    previous = os.umask(umask)
    try:
        run("convert", "digits", "--out", out / "digits")
        run("splits", "digits", "--store", digits_store, "--out", out / "lt.npy")
        run_dir = Path(run("pretrain", "digits_lt/simclr", "--device", "cpu",
                           *[arg for setting in settings for arg in ("--set", setting)]).stdout.strip())
        run("linear-eval", run_dir, "--epochs", "1", "--knn", "1", "--device", "cpu")
        run("export", run_dir, "--out", out / "backbone.pt")
        run("compare", run_dir, "--csv", out / "table.csv", "--md", out / "table.md")
        run("plot", run_dir, "--out", out / "plots")
    finally:
        os.umask(previous)
    written = sorted(out.rglob("*"))
    assert {"config.json", "run.json", "metrics.jsonl", "last.pt", "eval.json", "per_class.png", "backbone.pt",
            "table.csv", "loss.png", "lt.json", "meta.json"} <= {path.name for path in written}
    modes = {str(path.relative_to(out)): oct(stat.S_IMODE(path.stat().st_mode)) for path in written}
    assert modes == {name: oct(0o777 & ~umask if (out / name).is_dir() else 0o666 & ~umask) for name in modes}


def test_pretrain_list_names_every_preset_and_axis_choice():
    from fastlt.methods import INCOMPATIBLE, PRESETS, VIEW_FORWARD_CONFLICTS, axis_choices

    output = run("pretrain", "--list").output
    for name, axes in PRESETS.items():
        assert f"  {name} " in output and f"temperature_schedule={axes.temperature_schedule}" in output
    for axis, choices in axis_choices().items():
        assert " | ".join(choices) in output
    for axis_a, choice_a, axis_b, choice_b, _ in INCOMPATIBLE:
        assert f"{axis_a}={choice_a} with {axis_b}={choice_b}" in output
    for encoder, view_forward in VIEW_FORWARD_CONFLICTS:
        assert f"encoder={encoder} with view_forward={view_forward}" in output


def test_recipe_list_shows_every_shipped_recipe_by_data_set_with_its_method_and_purpose():
    from fastlt.recipe import load_recipe, shipped_recipes

    listed, data_set = {}, None
    for line in run("recipe", "list").output.splitlines():
        if not line.startswith(" "):
            data_set = line
            continue
        recipe, method, purpose = line.split(maxsplit=2)
        listed[f"{data_set}/{recipe}"] = (method, purpose)
    shipped = shipped_recipes()
    assert list(listed) == list(shipped) and len(shipped) >= 50
    for name, path in shipped.items():
        method, purpose = listed[name]
        assert method == load_recipe(path).method.name, name
        # Each recipe opens with its purpose, one whole sentence on one line: the list reads it from there.
        assert path.read_text().splitlines()[0] == f"# {purpose}" and purpose.endswith("."), name


def test_help_names_the_closed_choices_and_what_precision_does_in_evaluation():
    evaluation = " ".join(run("linear-eval", "--help").output.split())
    assert "--protocol [bcl|sdclr|ts|all|supcon|finetune|lotar]" in evaluation
    assert "--exit [backbone|sub-network|ensemble]" in evaluation
    assert "loss scaling" not in evaluation and "Autocast of the backbone as it extracts features" in evaluation
    bench = " ".join(run("bench", "linear-eval", "--help").output.split())
    assert "loss scaling" not in bench and "Autocast of the backbone as it extracts features" in bench
    for command in (["reproduce"], ["sweep"]):  # runs on every GPU, or on the cores, or as Slurm jobs
        assert "--devices auto|cpu|cuda:0,cuda:1,..." in run(*command, "--help").output, command
    for command in (["pretrain"], ["linear-eval"], ["bench", "views"], ["bench", "train"],
                    ["bench", "loader"], ["bench", "linear-eval"]):
        assert "--device DEVICE" in run(*command, "--help").output, command


def test_an_imagenet100_recipe_pretrains_and_runs_every_protocol_on_the_store_lists(tmp_path, ilsvrc):
    """The shipped ImageNet-100-LT recipe (shrunk) on a tiny ILSVRC store: pretraining on store:lt, the BCL and
    SDCLR probes on the rebuilt full list, SDCLR's few-shot on store:fewshot, TS on the LT list."""
    store = tmp_path / "imagenet100-lt"
    run("convert", "imagenet100-lt", "--root", ilsvrc, *[f"--list={name}={ilsvrc / f'{name}.txt'}" for name in
                                                          ("lt", "val", "fewshot", "test")],
        "--full-train", "--size", "36", "--out", store)
    shrink = ["model.arch=resnet18", "model.projector_hidden=16", "views.size=32", "eval.center_crop=32",
              "train.batch_size=8", "train.epochs=1", "train.name=sdclr", f"train.out_dir={tmp_path}",
              f"data.store={store}"]
    result = run("pretrain", "imagenet100_lt/sdclr", *TINY, *[arg for s in shrink for arg in ("--set", s)])
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    run("linear-eval", run_dir, "--protocol", "all", "--epochs", "2", "--device", "cpu")
    reports = {folder.name: json.loads((folder / "eval.json").read_text()) for folder in (run_dir / "eval").iterdir()}
    # the tiny store's full list is lt and val, so SDCLR's fc trains on lt (full less the held-out val) and says so
    assert sorted(reports) == ["bcl-linear-full", "sdclr-linear-fewshot", "sdclr-linear-lt", "ts-lt"]
    lists = {name: np.load(store / "lists" / f"{name}.npy") for name in ("lt", "val", "fewshot", "full")}
    assert reports["ts-lt"]["pretraining_split"]["samples"] == len(lists["lt"])
    probe = reports["bcl-linear-full"]["probe_lists"]
    assert [entry["samples"] for entry in probe] == [len(lists["full"])]
    sdclr = reports["sdclr-linear-lt"]
    assert sdclr["probe_lists"][0]["file"] == str(store / "lists" / "lt.npy")
    assert sdclr["protocol"]["held_out"]["file"] == str(store / "lists" / "val.npy")
    assert sdclr["protocol"]["groups"] == "thresholds" and sdclr["groups"]["few"] == [0, 1, 2]  # all < 20 images
    assert (sdclr["protocol"]["fc"]["crop"], sdclr["protocol"]["fc"]["batch_size"]) == ("resized", 512)
    assert sdclr["probe_lists"][0]["samples"] == len(np.setdiff1d(lists["full"], lists["val"]))  # never on val
