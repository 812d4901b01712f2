"""`fastlt reproduce`: the published splits and protocols per row, the table against the reports and the
published numbers, and a second invocation that resumes instead of starting again."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ILSVRC_LT_PER_CLASS
from fastlt.data.store import Store, StorePart, write_native_store
from fastlt.errors import FastltError
from fastlt.reproduce import TABLES, reproduce
from fastlt.sweep import Engine
from fastlt.train.trainer import pretrain
from fastlt.recipe import find_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ("model.width=4", "model.projector_hidden=16", "model.projector_out=8", "views.size=8", "train.batch_size=256",
        "train.progress=false", "eval.epochs=2", "eval.knn=[1]")
TWO_CPU_JOBS = Engine.of("cpu", 2, 1, None)


def cell(markdown: str, label: str) -> list[str]:
    """The cells of a table row by its first column."""
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
    return [part.strip() for part in line.strip("|").split("|")][1:]


def report(run_dir: Path, folder: str) -> dict:
    return json.loads((run_dir / "eval" / folder / "eval.json").read_text())


def test_cifar100_table_uses_the_published_split_protocols_and_numbers(tmp_path, cifar_train_labels):
    labels = np.load(cifar_train_labels)["c100"].astype(np.int64)
    rng = np.random.default_rng(0)
    test_labels = np.repeat(np.arange(100), 5)
    store = write_native_store(tmp_path / "c100", "cifar100", [str(c) for c in range(100)], {
        "train": StorePart(rng.integers(0, 256, (len(labels), 2, 2, 3), dtype=np.uint8), labels),
        "test": StorePart(rng.integers(0, 256, (len(test_labels), 2, 2, 3), dtype=np.uint8), test_labels)},
        {"dataset": "true labels, random 2x2 pixels"})
    out = reproduce("cifar100", store, tmp_path / "results", epochs=1, overrides=TINY, engine=TWO_CPU_JOBS,
                    precision="fp32")
    assert out == tmp_path / "results" / "cifar100_lt.md"
    markdown = out.read_text()
    runs = tmp_path / "results" / "cifar100_lt" / "runs"
    for row in TABLES["cifar100"].rows:
        config = json.loads((runs / f"{row.recipe}-split1" / "config.json").read_text())
        assert config["data"]["split"].endswith("cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy")
        assert config["method"]["name"] == row.recipe
    simclr = runs / "simclr-split1"
    full = report(simclr, "bcl-linear-cifar100_trainIdxList")["reports"]["linear"]["overall"]
    few = report(simclr, "bcl-linear-100shot")["reports"]["linear, 100-shot"]["overall"]
    assert cell(markdown, "SimCLR")[:6] == [f"{full:.2f}", "50.7", f"{full - 50.7:+.2f}",
                                            f"{few:.2f}", "46.3", f"{few - 46.3:+.2f}"]
    ts = report(runs / "simclr-ts-split1", "ts-cifar100_split1_D_i")
    assert ts["protocol"]["name"] == "ts"
    knn = ts["reports"]["knn@1"]["class_mean"]
    assert cell(markdown, "SimCLR-TS")[:3] == [f"{knn:.2f}", "29.12", f"{knn - 29.12:+.2f}"]
    assert not (runs / "simclr-ts-split1" / "eval" / "bcl-linear-cifar100_trainIdxList").exists()


def test_digits_reproduction_resumes_and_skips_finished_stages(tmp_path, digits_store):
    settings = [f"data.store={json.dumps(str(digits_store))}", f"train.out_dir={json.dumps(str(tmp_path / 'r' / 'digits_lt' / 'runs'))}",
                "train.name=\"sdclr-split1\"", "train.epochs=2", *TINY]
    # A run stopped after its first epoch (as an interrupted invocation leaves it).
    pretrain(load_recipe(find_recipe("digits_lt/sdclr"), settings), until_epoch=1)
    out = reproduce("digits", digits_store, tmp_path / "r", epochs=2, overrides=TINY, engine=TWO_CPU_JOBS,
                    precision="fp32")
    runs, logs = tmp_path / "r" / "digits_lt" / "runs", tmp_path / "r" / "digits_lt" / "logs"
    said = {path.stem: path.read_text() for path in logs.glob("*.log")}
    assert sorted(said) == ["bcl-d-split1", "bcl-i-split1", "sdclr-split1", "simclr-split1"]
    # the run stopped before is resumed, the others start; nothing starts twice
    assert f"{runs / 'sdclr-split1'}: resuming at epoch 2 of 2\n" in said["sdclr-split1"]
    assert sum(log.count("resuming") for log in said.values()) == 1
    # 2 epochs are fewer than the digits recipes' 5 of warm-up: each run this invocation started said so
    warning = ("warning: optim.warmup_epochs 5 >= train.epochs 2: the whole run is the lr's linear warm-up, which "
               "peaks at the end at best and never decays; give fewer with --set optim.warmup_epochs=N (N < 2)\n")
    assert [name for name, log in sorted(said.items()) if warning in log] == ["bcl-d-split1", "bcl-i-split1",
                                                                            "simclr-split1"]
    resumed = json.loads((runs / "sdclr-split1" / "run.json").read_text())["resumes"]
    assert [entry["from_epoch"] for entry in resumed] == [1]
    first = out.read_text()
    assert "random init (same architecture)" in first
    simclr = report(runs / "simclr-split1", "bcl-linear-all-train")["reports"]
    assert cell(first, "SimCLR")[0] == f"{simclr['linear']['overall']:.2f}"
    assert cell(first, "random init (same architecture)")[0] == f"{simclr['random-init linear']['overall']:.2f}"
    assert re.search(r"\| bcl-d, split 1 \| 2 \| \d+ s \|", first)
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", first)
    assert "digits_lt/plots/loss.png" in links and "digits_lt/plots/bcl_weights.png" in links
    assert "digits_lt/runs/simclr-split1/eval/bcl-linear-all-train/per_class.png" in links
    assert all((tmp_path / "r" / link).is_file() for link in links)
    # the sweep's own table of the same runs, beside the reproduction's
    sweep_table = (tmp_path / "r" / "digits_lt" / "table.md").read_text()
    assert f"| simclr | - | bcl-linear | linear | 1 | 2 | {simclr['linear']['overall']:.2f} |" in sweep_table

    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    again = reproduce("digits", digits_store, tmp_path / "r", epochs=2, overrides=TINY, engine=TWO_CPU_JOBS,
                      precision="fp32")
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()} == stamps  # nothing trained or evaluated
    assert cell(again.read_text(), "SimCLR") == cell(first, "SimCLR")

    with pytest.raises(FastltError, match="has one split only"):
        reproduce("digits", digits_store, tmp_path / "r", splits=(1, 2))
    with pytest.raises(FastltError, match="not a fastlt store"):
        reproduce("cifar10", tmp_path / "nowhere", tmp_path / "r")


def test_a_stopped_reproduction_says_to_run_the_same_command_again(tmp_path, digits_store):
    """SIGTERM to `fastlt reproduce` while its runs train: passed to the workers, which stop at a step with a
    checkpoint; the command says how to go on and exits 128 + 15; run again, the stopped runs resume."""
    command = [sys.executable, "-m", "fastlt", "reproduce", "digits", "--store", str(digits_store), "--out",
               str(tmp_path / "r"), "--epochs", "200", "--jobs", "2", "--precision", "fp32",
               *(f"--set={setting}" for setting in TINY)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "r" / "digits_lt" / "runs"
    deadline = time.monotonic() + 120
    while len(list(runs.glob("*/metrics.jsonl"))) < 2 and time.monotonic() < deadline:  # both past an epoch
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.splitlines()[-1] == ("SIGTERM: the sweep stopped, its running runs at their last checkpoints; run the "
                                       "same `fastlt reproduce digits` command again to continue (finished runs and "
                                       "reports are kept)")
    states = {path.stem: json.loads(path.read_text())["state"] for path in (tmp_path / "r" / "digits_lt" / "state").glob("*.json")}
    assert sorted(states.values()) == ["stopped", "stopped"], states  # the two running runs; none started after
    for name in states:
        assert (runs / name / "checkpoints" / "last.pt").is_file()


def test_make_reproduce_imagenet100_converts_pretrains_and_tabulates_the_ts_row(tmp_path, ilsvrc):
    """The Makefile target end to end on a tiny ILSVRC folder: convert with given lists, one epoch of the
    shipped SimCLR-TS recipe (shrunk by SET), the TS evaluation on the store's LT list (FS on its fewshot list),
    the table."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "fastlt").is_file():
        pytest.fail(f"{venv}/bin/fastlt missing: install fastlt into the environment that runs the tests")
    lists = " ".join(f"{name}={ilsvrc / f'{name}.txt'}" for name in ("lt", "val", "fewshot", "test"))
    shrink = ("model.arch=resnet18 model.width=4 model.projector_hidden=16 model.projector_out=8 views.size=32 "
              "eval.center_crop=32 train.batch_size=8 train.progress=false train.precision=fp32")
    data, results = tmp_path / "data", tmp_path / "results"

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-C", str(ROOT), "-o", str(venv / ".fastlt-installed"), f"VENV={venv}",
                               f"DATA={data}", f"RESULTS={results}", "reproduce-imagenet100", *args],
                              capture_output=True, text=True, timeout=600)

    missing = make()
    assert missing.returncode == 2 and "set IMAGENET=path/to/ILSVRC2012" in missing.stderr, missing.stderr
    done = make(f"IMAGENET={ilsvrc}", f"LISTS={lists}", "SIZE=36", "EPOCHS=1", f"SET={shrink}")
    assert done.returncode == 0, done.stdout + done.stderr
    store = Store.open(data / "imagenet100-lt")
    assert store.parts == ["train", "test"] and store.lists == ["lt", "val", "fewshot"]
    assert store.meta["image_shape"] == [36, 36, 3]

    run = results / "imagenet100_lt" / "runs" / "simclr-ts-split1"
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["split"] == "store:lt" and config["eval"]["val_split"] == "store:val"  # as written
    assert config["model"]["arch"] == "resnet18" and config["views"]["size"] == 32
    (epoch,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "monitor_knn" in epoch  # the held-out kNN ran on the store's val list
    ts = report(run, "ts-lt")
    assert ts["pretraining_split"]["samples"] == sum(ILSVRC_LT_PER_CLASS)
    assert ts["probe_lists"][1]["samples"] == len(np.load(data / "imagenet100-lt" / "lists" / "fewshot.npy"))
    markdown = (results / "imagenet100_lt.md").read_text()
    knn = ts["reports"]["knn@1"]["class_mean"]
    assert cell(markdown, "SimCLR-TS")[:3] == [f"{knn:.2f}", "38.38", f"{knn - 38.38:+.2f}"]
    assert cell(markdown, "SimCLR-TS")[9:12] == [f"{ts['reports']['svm LT']['class_mean']:.2f}", "47.26",
                                                 f"{ts['reports']['svm LT']['class_mean'] - 47.26:+.2f}"]

    again = make(f"IMAGENET={ilsvrc}", "EPOCHS=1", f"SET={shrink}")  # the store and the run are kept
    assert again.returncode == 0 and "convert imagenet100-lt" not in again.stdout, again.stdout + again.stderr
    assert [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] == [epoch]
