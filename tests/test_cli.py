"""The command line end to end on tiny data, and its one-line errors for bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastlt.cli import main


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


TINY = ["--set", "model.width=4", "--set", "model.projector_hidden=32", "--set", "model.projector_out=16",
        "--set", "train.batch_size=64", "--set", "train.progress=false", "--set", "train.precision=fp32",
        "--set", "optim.warmup_epochs=1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, digits_store) -> Path:
    out = tmp_path_factory.mktemp("runs")
    recipe = Path(__file__).resolve().parents[1] / "pipelines" / "digits_lt" / "simclr.toml"
    result = run("pretrain", recipe, "--set", f"data.store={digits_store}", "--set", f"train.out_dir={out}",
                 "--set", "train.epochs=1", "--set", "train.name=tiny", *TINY)
    run_dir = Path(result.output.strip().splitlines()[-1])
    assert run_dir == out / "tiny"
    return run_dir


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
    assert_one_line_error(run("convert", "cifar10", "--source", tmp_path / "missing.tar.gz", "--out",
                              tmp_path / "out", ok=False), "missing.tar.gz")


def test_splits_digits(tmp_path, digits_store):
    run("splits", "digits", "--store", digits_store, "--ratio", "5", "--seed", "3", "--out", tmp_path / "lt.npy")
    manifest = json.loads((tmp_path / "lt.json").read_text())
    counts = manifest["class_counts"]
    assert max(counts) / min(counts) == pytest.approx(5, rel=0.15)
    assert len(np.load(tmp_path / "lt.npy")) == sum(counts)


def test_pretrain_recipe_errors_create_no_run(tmp_path, digits_store):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\nstore = "{digits_store}"\n[optim]\nlrr = 0.1\n[train]\nout_dir = "{tmp_path / "runs"}"\n')
    assert_one_line_error(run("pretrain", recipe, ok=False), str(recipe), "optim.lrr")
    recipe.write_text(f'[data]\nstore = "{digits_store}"\n[train]\nepochs = "ten"\nout_dir = "{tmp_path / "runs"}"\n')
    assert_one_line_error(run("pretrain", recipe, ok=False), "train.epochs")
    recipe.write_text(f'[data]\nstore = "{digits_store}"\n[train]\nout_dir = "{tmp_path / "runs"}"\n')
    assert_one_line_error(run("pretrain", recipe, "--set", "method.name=byol", ok=False), "method.name")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("indices, problem", [([0, 1, 1], "more than once"), ([0, 5_000_000], "outside [0, 1198)")])
def test_pretrain_bad_split_file(tmp_path, digits_store, indices, problem):
    split = tmp_path / "bad.npy"
    np.save(split, np.array(indices, dtype=np.int64))
    result = run("pretrain", Path(__file__).resolve().parents[1] / "pipelines" / "digits_lt" / "simclr.toml",
                 "--set", f"data.store={digits_store}", "--split", split,
                 "--set", f"train.out_dir={tmp_path / 'runs'}", ok=False)
    assert_one_line_error(result, str(split), problem)
    assert not (tmp_path / "runs").exists()


def test_linear_eval_writes_report_with_groups_and_random_baseline(tiny_run, tmp_path):
    result = run("linear-eval", tiny_run, "--epochs", "3", "--knn", "1", "--random-init", "--out", tmp_path / "eval")
    assert "| linear |" in result.output and "| random-init linear |" in result.output
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(report["reports"]) == {"linear", "knn@1", "random-init linear", "random-init knn@1"}
    linear = report["reports"]["linear"]
    assert {"overall", "many", "medium", "few", "per_class", "class_std"} <= set(linear)
    assert len(linear["per_class"]) == 10
    assert sorted(sum(report["groups"].values(), [])) == list(range(10))
    assert (tmp_path / "eval" / "eval.md").read_text().count("|") > 20


def test_linear_eval_of_a_self_damaging_run(tmp_path, digits_store):
    recipe = Path(__file__).resolve().parents[1] / "pipelines" / "digits_lt" / "bcl-d.toml"
    result = run("pretrain", recipe, "--set", f"data.store={digits_store}", "--set", f"train.out_dir={tmp_path}",
                 "--set", "train.epochs=1", "--set", "train.name=bcl-d", *TINY)
    run_dir = Path(result.output.strip().splitlines()[-1])
    evaluation = run("linear-eval", run_dir, "--epochs", "2", "--knn", "")
    assert "| linear |" in evaluation.output and (run_dir / "eval" / "eval.json").is_file()


def test_linear_eval_refuses_other_architectures_and_non_checkpoints(tiny_run, tmp_path):
    import torch

    checkpoint = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=False)
    checkpoint["recipe"]["model"]["width"] = 8  # the weights are for width 4
    other = tmp_path / "other.pt"
    torch.save(checkpoint, other)
    assert_one_line_error(run("linear-eval", other, ok=False), str(other), "different model")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert_one_line_error(run("linear-eval", junk, ok=False), str(junk), "not a readable checkpoint")
    assert_one_line_error(run("linear-eval", tmp_path / "nothing", ok=False), "not found")


def test_resume_with_a_different_architecture_is_refused(tiny_run):
    result = run("pretrain", "--resume", tiny_run, "--set", "model.width=8", "--set", "train.epochs=2", ok=False)
    assert_one_line_error(result, "last.pt", "different model")


def test_info_reports_backends():
    report = json.loads(run("info").output)
    assert {"versions", "devices", "compile", "dali", "ffcv", "bf16"} <= set(report)
    assert report["devices"][0] == "cpu"


def test_splits_cifar_from_a_store_reproduces_the_shipped_files(tmp_path, reference_splits, cifar_train_labels):
    from fastlt.data.store import StorePart, write_native_store

    # The true CIFAR-100 train labels with 1x1 images stand in for the converted data set:
    # split generation reads only the labels.
    labels = np.load(cifar_train_labels)["c100"].astype(np.int64)
    images = np.zeros((len(labels), 1, 1, 3), dtype=np.uint8)
    store = write_native_store(tmp_path / "c100", "cifar100", [str(c) for c in range(100)],
                               {"train": StorePart(images, labels)}, {"dataset": "labels only"})
    run("splits", "cifar", "cifar100", "--store", store, "--out", tmp_path / "splits", "--split-ids", "1")
    shipped = Path(__file__).resolve().parents[1] / "splits" / "cifar100_lt"
    for name in ("split1_D_i.npy", "split1_D_b.npy", "split1_S_b.npy", "train_idx.npy", "val_idx.npy"):
        assert (tmp_path / "splits" / name).read_bytes() == (shipped / name).read_bytes(), name
    published_val = reference_splits / "sdclr" / "cifar100" / "cifar100_valIdxList.npy"
    run("splits", "cifar", "cifar100", "--store", store, "--out", tmp_path / "sdclr_pool", "--split-ids", "1",
        "--val-list", published_val)
    assert np.array_equal(np.load(tmp_path / "sdclr_pool" / "val_idx.npy"), np.load(published_val))
