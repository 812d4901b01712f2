"""Shared fixtures: tiny CIFAR tarballs in the real pickle format, a tiny ILSVRC-shaped JPEG folder with
SDCLR-format lists, the coloured-digits store, the reference splits and the true CIFAR train labels.

Each tarball fixture also writes ``expected.npz`` beside the tarball: the NHWC images and
labels that were packed (train in pickle order, then test) and the class names, built
before packing so readers can be checked against them.
"""
from __future__ import annotations

import importlib.util
import io
import os
import pickle
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from numpy import linalg as LA

from PIL import Image
from sklearn.datasets import load_sample_images

from fastlt.data.sources import make_coloured_digits
from fastlt.data.store import write_native_store


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA device; every other test is pinned to the CPU")
    config.addinivalue_line("markers", "slow: whole trainings, compiles and started processes (make test-quick "
                                       "leaves them out; conftest.SLOW_FILES)")
    # Under pytest-xdist (make test: -n 2) the cores are divided between the workers, and the fastlt processes a
    # test starts inherit the worker's share: two workers each running torch on every core would halve both.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    # Inductor's on-disk cache is keyed without the oneDNN / ATen ISA limits, and kernels built under one
    # setting gave NaNs when reused under another (AVX2 emulated on an AVX-512 CPU): one cache per setting,
    # for every compile of the suite and the fastlt processes it starts, unless the caller chose a cache.
    isa = "-".join(os.environ.get(name, "native") for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"fastlt-inductor-{isa}"))
    # Skipped FFCV tests are named, with tools/install_ffcv.sh's reason, in the run's last lines; in CI they fail it.
    report = _load_beside("ffcv_report")
    config.pluginmanager.register(report.FfcvReport(Path(sys.prefix) / "ffcv-not-installed.txt",
                                                    report.running_in_ci()), "fastlt-ffcv-report")


def _load_beside(name: str) -> ModuleType:
    """A helper module of tests/ by its path below tests/ (the suite imports in importlib mode: tests/ is not on
    sys.path)."""
    spec = importlib.util.spec_from_file_location(f"fastlt_tests_{name.replace('/', '_')}",
                                                  Path(__file__).parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def launch() -> ModuleType:
    """tests/train/launch.py: torchrun on the CPU, for the tests that start several processes. (A conftest.py
    in tests/train would shadow this one as the module `conftest` that tests import helpers from.)"""
    return _load_beside("train/launch")


# Whole trainings, compiles and processes started: `make test-quick` (pytest -m "not slow") leaves them out.
SLOW_FILES = {"test_demo.py", "test_reproduce.py", "test_packaging.py", "test_compile.py", "test_faults.py",
              "test_distributed.py", "test_distributed_runs.py", "test_presets.py", "test_sweep_runs.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow files' tests are marked slow and go first, the demo's claim (the longest test) before them: the
    xdist workers then end together instead of one waiting out a long test begun last. CUDA tests are reported
    as skipped (with the reason) on machines without a GPU."""
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: (item.path.name != "test_demo.py", item.path.name not in SLOW_FILES))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is false on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> CIFAR's [N, 3072] rows: the 1024 R values (row-major), then G, then B."""
    return np.concatenate([images[..., channel].reshape(len(images), -1) for channel in range(3)], axis=1)


def _add_member(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def _add_folder(archive: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    archive.addfile(info)


def _pickled(content: dict) -> bytes:
    """Protocol 2, bytes keys: as close to the Python-2 originals as Python 3 gets."""
    return pickle.dumps(content, protocol=2)


def build_cifar_tarball(folder: Path, variant: str, train_batches: list[int], test_size: int, seed: int) -> Path:
    """A real-format CIFAR tarball with random images; labels shuffled so pickle order matters.

    train_batches: number of images in each train pickle (CIFAR-10: 5 batches; CIFAR-100: 1 file).
    """
    rng = np.random.default_rng(seed)
    num_classes = 10 if variant == "cifar10" else 100
    class_names = [f"{variant}-class-{c}" for c in range(num_classes)]
    sizes = [*train_batches, test_size]
    images = [rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8) for n in sizes]
    labels = [rng.permutation(np.arange(n) % num_classes) for n in sizes]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("cifar-10-python.tar.gz" if variant == "cifar10" else "cifar-100-python.tar.gz")
    with tarfile.open(path, "w:gz") as archive:
        if variant == "cifar10":
            root = "cifar-10-batches-py"
            _add_folder(archive, root)
            names = [f"data_batch_{k}" for k in range(1, len(train_batches) + 1)] + ["test_batch"]
            for name, batch_images, batch_labels in zip(names, images, labels):
                _add_member(archive, f"{root}/{name}", _pickled({
                    b"batch_label": name.encode(), b"labels": [int(x) for x in batch_labels],
                    b"data": _cifar_rows(batch_images), b"filenames": [b"x.png"] * len(batch_labels)}))
            _add_member(archive, f"{root}/batches.meta", _pickled({
                b"label_names": [n.encode() for n in class_names], b"num_cases_per_batch": 10000, b"num_vis": 3072}))
            _add_member(archive, f"{root}/readme.html", b"<html></html>")
        else:
            root = "cifar-100-python"
            _add_folder(archive, root)
            for name, batch_images, batch_labels in zip(["train", "test"], images, labels):
                _add_member(archive, f"{root}/{name}", _pickled({
                    b"filenames": [b"x.png"] * len(batch_labels), b"batch_label": name.encode(),
                    b"fine_labels": [int(x) for x in batch_labels],
                    b"coarse_labels": [int(x) // 5 for x in batch_labels],
                    b"data": _cifar_rows(batch_images)}))
            _add_member(archive, f"{root}/meta", _pickled({
                b"fine_label_names": [n.encode() for n in class_names],
                b"coarse_label_names": [f"coarse-{c}".encode() for c in range(20)]}))
    np.savez(folder / "expected.npz",
             train_images=np.concatenate(images[:-1]), train_labels=np.concatenate(labels[:-1]),
             test_images=images[-1], test_labels=labels[-1], class_names=np.array(class_names))
    return path


@pytest.fixture(scope="session")
def cifar10_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 train batches of 100 (10/class), a test batch of 50; expected.npz beside it."""
    return build_cifar_tarball(tmp_path_factory.mktemp("cifar10"), "cifar10", [100] * 5, 50, seed=10)


@pytest.fixture(scope="session")
def cifar100_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """500 train images (5/class), 100 test (1/class); expected.npz beside it."""
    return build_cifar_tarball(tmp_path_factory.mktemp("cifar100"), "cifar100", [500], 100, seed=100)


ILSVRC_SYNSETS = ("n001", "n002", "n003")
ILSVRC_TRAIN_PER_CLASS = (7, 5, 4)
ILSVRC_LT_PER_CLASS = (6, 4, 2)


@pytest.fixture(scope="session")
def ilsvrc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ILSVRC-shaped folder of JPEGs cut from scikit-learn's two photos in several aspect ratios, with
    SDCLR-format lists: lt.txt (6, 4, 2 per class), val.txt (the train images lt leaves out), fewshot.txt
    (each class's first image, which lt holds too) and test.txt (2 per class, from val/)."""
    root = tmp_path_factory.mktemp("ilsvrc")
    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for split, counts in (("train", ILSVRC_TRAIN_PER_CLASS), ("val", (2, 2, 2))):
        for label, (synset, count) in enumerate(zip(ILSVRC_SYNSETS, counts)):
            folder = root / split / synset
            folder.mkdir(parents=True)
            for i in range(count):
                top, left = rng.integers(0, 150, 2)
                height, width = 90 + 20 * i, 160 - 10 * i  # landscape and portrait
                Image.fromarray(photos[(label + i) % 2][top:top + height, left:left + width]).save(
                    folder / f"{synset}_{i}.JPEG", quality=90)

    def write_list(name: str, split: str, ranges: list[range]) -> None:
        (root / f"{name}.txt").write_text("".join(f"{split}/{synset}/{synset}_{i}.JPEG {label}\n" for label, (synset, rows)
                                                  in enumerate(zip(ILSVRC_SYNSETS, ranges)) for i in rows))

    write_list("lt", "train", [range(n) for n in ILSVRC_LT_PER_CLASS])
    write_list("val", "train", [range(lt, n) for lt, n in zip(ILSVRC_LT_PER_CLASS, ILSVRC_TRAIN_PER_CLASS)])
    write_list("fewshot", "train", [range(1)] * 3)
    write_list("test", "val", [range(2)] * 3)
    return root


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The coloured-digits native store, seed 0 (what `fastlt convert digits` writes)."""
    parts, class_names = make_coloured_digits(0)
    out = tmp_path_factory.mktemp("stores") / "digits"
    return write_native_store(out, "digits", class_names, parts, {"dataset": "coloured-digits", "seed": 0})


TINY_PRETRAIN = ["--device", "cpu", "--set", "model.width=4", "--set", "model.projector_hidden=32",
                 "--set", "model.projector_out=16", "--set", "train.batch_size=64", "--set", "train.progress=false",
                 "--set", "train.precision=fp32", "--set", "optim.warmup_epochs=1"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, digits_store: Path) -> Path:
    """A one-epoch width-4 SimCLR run of the digits recipe: `fastlt pretrain` through the CLI, run folder tiny/."""
    from click.testing import CliRunner

    from fastlt.cli import main

    out = tmp_path_factory.mktemp("runs")
    recipe = Path(__file__).resolve().parents[1] / "pipelines" / "digits_lt" / "simclr.toml"
    result = CliRunner().invoke(main, ["pretrain", str(recipe), "--set", f"data.store={digits_store}", "--set",
                                       f"train.out_dir={out}", "--set", "train.epochs=1", "--set",
                                       "train.name=tiny", *TINY_PRETRAIN])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert Path(result.stdout.strip().splitlines()[-1]) == out / "tiny"
    return out / "tiny"


@pytest.fixture(scope="session")
def reference_splits() -> Path:
    """The published SDCLR/BCL split files, kept in the project at splits/published (see its README)."""
    path = Path(__file__).resolve().parents[1] / "splits" / "published"
    if not (path / "derived_class_counts.json").is_file():
        pytest.fail(f"{path}: the published split files are missing; they are part of the project "
                    "(splits/published), restore them from version control")
    return path


@pytest.fixture(scope="session")
def cifar_train_labels() -> Path:
    """The 50,000 true CIFAR train labels in pickle order (int16 arrays c10, c100); see tests/fixtures/README.md."""
    path = Path(__file__).resolve().parent / "fixtures" / "cifar_train_labels.npz"
    if not path.is_file():
        pytest.fail(f"{path}: the CIFAR train-label fixture is missing; it is part of the project "
                    "(tests/fixtures), restore it from version control")
    return path


def lrs_as_driven(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int,
                  scheduler_first: bool) -> list[float]:
    """The lr each of ``steps`` optimiser steps runs at, read off a real optimiser and scheduler driven as a reference
    drives them: ``scheduler.step()`` before each ``optimizer.step()`` (scheduler_first) or after it."""
    seen = []
    for _ in range(steps):
        if scheduler_first:
            scheduler.step()
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if not scheduler_first:
            scheduler.step()
    return seen


# The Temperature-Schedules notebooks' evaluation code, transcribed as written: what the TS tests compare with.
def notebook_knn(train_features, train_gt, test_features, test_gt, num_class, knn):
    """simclr_tau_cifar100.ipynb, cells 5-8 (the same in the CIFAR-10 and ImageNet-100 notebooks): L2 normalisation,
    torch.cdist, torch.argsort, per-class vote counts, np.argmax. Returns the per-class accuracies and, alongside,
    each test sample's predicted class."""
    train_LT_features = train_features / LA.norm(train_features, 2, axis=-1).reshape(-1, 1)
    test_features = test_features / LA.norm(test_features, 2, axis=-1).reshape(-1, 1)
    dist_tmp = torch.cdist(torch.tensor(test_features), torch.tensor(train_LT_features))
    sorted_dist_test_lt = torch.argsort(dist_tmp, dim=1).numpy()
    class_acc, predicted = [], np.full(len(test_gt), -1)
    loc_gt = np.array(test_gt)
    train_loc_gt = np.array(train_gt)
    for cl in range(num_class):
        predict_mat = np.zeros(((loc_gt == cl).sum(), num_class))
        predictions = sorted_dist_test_lt[loc_gt == cl, :knn]
        for cl2 in range(num_class):
            predict_mat[:, cl2] = (train_loc_gt[predictions] == cl2).sum(1)
        class_acc.append((np.argmax(predict_mat, 1) == cl).sum() / (loc_gt == cl).sum())
        predicted[loc_gt == cl] = np.argmax(predict_mat, 1)
    return class_acc, predicted


def notebook_few_shot(local_data, local_gt, num_class):
    """simclr_tau_cifar100.ipynb, cell 8: the FS SVM's training data and labels, in the order fitted."""
    local_counter = Counter(local_gt)
    n_samples = local_counter.most_common()[-1][-1]
    np.random.seed(42)
    new_data = []
    new_gt = []
    for cl in range(num_class):
        local_idxs = np.where(local_gt == cl)[0]
        np.random.shuffle(local_idxs)
        selected_idxs = local_idxs[:n_samples]
        new_data.append(local_data[selected_idxs])
        new_gt.extend([cl] * n_samples)
    return np.concatenate(new_data, 0), new_gt


@pytest.fixture(scope="session")
def ts_notebook() -> SimpleNamespace:
    """``knn`` and ``few_shot``: the notebooks' code above."""
    return SimpleNamespace(knn=notebook_knn, few_shot=notebook_few_shot)
