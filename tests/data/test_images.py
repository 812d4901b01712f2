"""Image files into native stores: list files, class folders, long-tail subsampling, bad images, through the CLI."""
from pathlib import Path

import numpy as np
import pytest
import torchvision.transforms as T
from click.testing import CliRunner
from PIL import Image

from fastlt.cli import main
from fastlt.data.images import (
    IMAGENET100_LISTS,
    decode_square,
    image_lists,
    long_tail_counts,
    read_list_file,
    union_of_lists,
)
from fastlt.data.splits import load_split
from fastlt.data.store import Store
from fastlt.errors import FastltError
from conftest import ILSVRC_SYNSETS as SYNSETS, ILSVRC_TRAIN_PER_CLASS as TRAIN_PER_CLASS

PUBLISHED = Path(__file__).resolve().parents[2] / "splits" / "published" / "sdclr" / "imagenet-100"
def convert(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["convert", *args])
    return result.exit_code, result.output


def test_imagenet_lists_index_one_train_part_sorted_by_path_at_the_stated_size(ilsvrc, tmp_path):
    out = tmp_path / "store"
    names = ("lt", "val", "fewshot")
    code, output = convert("imagenet100-lt", "--root", str(ilsvrc), *[f"--list={n}={ilsvrc / f'{n}.txt'}" for n in names],
                           "--list", f"test={ilsvrc / 'test.txt'}", "--size", "48", "--workers", "2",
                           "--out", str(out), "--verify")
    assert code == 0, output
    assert "wrote" in output and "verified" in output
    store = Store.open(out)
    assert store.class_names == list(SYNSETS) and store.meta["image_shape"] == [48, 48, 3]
    assert store.parts == ["train", "test"] and store.lists == list(names)
    listed = {name: read_list_file(ilsvrc / f"{name}.txt") for name in (*names, "test")}
    union = sorted(set(listed["lt"][0]) | set(listed["val"][0]) | set(listed["fewshot"][0]))
    assert len(union) == sum(TRAIN_PER_CLASS)  # fewshot's images, which lt holds too, are stored once

    def expected(path: str) -> np.ndarray:  # torchvision's Resize(shorter side) + CenterCrop, per image
        with Image.open(ilsvrc / path) as image:
            return np.asarray(T.CenterCrop(48)(T.Resize(48, T.InterpolationMode.BICUBIC)(image.convert("RGB"))))

    train, test = store.part("train"), store.part("test")
    for name in names:
        paths, labels = listed[name]
        rows = np.load(store.list_file(name))
        assert rows.tolist() == [union.index(path) for path in paths]  # list order kept
        assert np.array_equal(train.labels[rows], labels)
        assert all(np.array_equal(train.images[row], expected(path)) for row, path in zip(rows, paths))
        assert store.meta["lists"][name]["count"] == len(paths) and store.meta["lists"][name]["left_out"] == 0
    paths, labels = listed["test"]
    assert np.array_equal(test.labels, labels)
    assert all(np.array_equal(test.images[row], expected(path)) for row, path in enumerate(paths))
    source = store.meta["source"]
    assert source["stored_size"] == 48 and source["parts"]["train"] == {"images": 16, "listed": 16, "skipped": []}
    assert len(source["lists"]["lt"]["sha256"]) == 64
    with pytest.raises(FastltError, match="full.npy: no such split file \\(the store keeps the lists fewshot, lt, val\\)"):
        load_split(store.list_file("full"), 16)


@pytest.mark.parametrize("lines, message", [
    ("train/n001/n001_0.JPEG 1\ntrain/n002/n002_0.JPEG 0\ntrain/n003/n003_0.JPEG 2\n",
     "label 1 is 'n001' here but 'n002' in another list"),
    ("train/n001/n001_0.JPEG 0\ntrain/n002/n002_0.JPEG 1\ntrain/n003/n003_0.JPEG 2\ntrain/n001/n001_1.JPEG 3\n",
     "labels 0 and 3 both name the class folder 'n001'"),
])
def test_lists_that_label_a_class_differently_are_refused(ilsvrc, tmp_path, lines, message):
    other = tmp_path / "other.txt"
    other.write_text(lines)
    code, output = convert("imagenet100-lt", "--root", str(ilsvrc), "--list", f"lt={ilsvrc / 'lt.txt'}",
                           "--list", f"other={other}", "--size", "16", "--out", str(tmp_path / "store"))
    assert code == 1 and message in output and "Traceback" not in output, output
    assert not (tmp_path / "store").exists()


def test_one_worker_and_two_write_the_same_bytes(ilsvrc, tmp_path):
    stores = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        assert convert("imagenet100-lt", "--root", str(ilsvrc), "--list", f"lt={ilsvrc / 'lt.txt'}",
                       "--size", "24", "--workers", workers, "--out", str(out))[0] == 0
        stores.append(Store.open(out).meta["parts"]["train"]["sha256"])
    assert stores[0] == stores[1]


def test_full_train_is_rebuilt_from_every_train_image(ilsvrc, tmp_path):
    out = tmp_path / "full"
    code, output = convert("imagenet100-lt", "--root", str(ilsvrc), "--list", f"lt={ilsvrc / 'lt.txt'}",
                           "--full-train", "--size", "16", "--out", str(out))
    assert code == 0, output
    store = Store.open(out)
    labels = store.part("train").labels
    assert np.bincount(labels).tolist() == list(TRAIN_PER_CLASS)  # the union: every train image once
    assert np.bincount(labels[np.load(store.list_file("full"))]).tolist() == list(TRAIN_PER_CLASS)
    assert np.bincount(labels[np.load(store.list_file("lt"))]).tolist() == [6, 4, 2]
    assert "rebuilt" in store.meta["source"]["lists"]["full"]


def test_a_corrupt_jpeg_stops_the_convert_by_name_or_is_skipped_and_listed(ilsvrc, tmp_path):
    root = tmp_path / "copy"
    for file in ilsvrc.rglob("*.JPEG"):
        target = root / file.relative_to(ilsvrc)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.read_bytes())
    bad = root / "train" / "n002" / "n002_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:300])
    out = tmp_path / "store"
    args = ["imagenet100-lt", "--root", str(root), "--list", f"lt={ilsvrc / 'lt.txt'}", "--size", "16",
            "--out", str(out)]
    code, output = convert(*args)
    assert code == 1 and f"error: {bad}: cannot decode" in output and "--skip-bad" in output
    assert "Traceback" not in output and not out.exists() and list(tmp_path.glob(".store*")) == []
    code, output = convert(*args, "--skip-bad")
    assert code == 0 and "1 unreadable image left out" in output, output
    store = Store.open(out)
    paths, labels = read_list_file(ilsvrc / "lt.txt")
    keep = [i for i, path in enumerate(paths) if path != "train/n002/n002_1.JPEG"]
    assert np.array_equal(store.part("train").labels[np.load(store.list_file("lt"))], labels[keep])
    assert store.meta["lists"]["lt"]["left_out"] == 1 and store.meta["lists"]["lt"]["count"] == len(keep)
    (skipped,) = store.meta["source"]["parts"]["train"]["skipped"]
    assert skipped["path"] == "train/n002/n002_1.JPEG" and skipped["reason"]


@pytest.mark.parametrize("lines, message", [
    ("train/n001/n001_0.JPEG 0\ntrain/n001/nothere.JPEG 0\n", "nothere.JPEG: listed for part 'train' but not found"),
    ("train/n001/n001_0.JPEG zero\n", "line 1: expected '<relative path> <label>'"),
    ("train/n001/n001_0.JPEG 0\ntrain/n002/n002_0.JPEG 0\n", "label 0 names images in both 'n001' and 'n002'"),
    ("train/n001/n001_0.JPEG 0\ntrain/n001/n001_0.JPEG 0\n", "lists an image more than once"),
    ("train/n001/n001_0.JPEG 0\ntrain/n003/n003_0.JPEG 2\n", "labels must be 0..K-1"),
])
def test_bad_list_files_give_one_line_errors_and_no_store(ilsvrc, tmp_path, lines, message):
    listing = tmp_path / "bad.txt"
    listing.write_text(lines)
    code, output = convert("imagenet100-lt", "--root", str(ilsvrc), "--list", f"lt={listing}", "--size", "16",
                           "--out", str(tmp_path / "store"))
    assert code == 1 and message in output and "Traceback" not in output, output
    assert not (tmp_path / "store").exists()


def test_options_that_do_not_apply_are_refused(ilsvrc, tmp_path):
    for args, message in ((["cifar10", "--root", str(ilsvrc)], "--root apply to imagenet100-lt and folder only"),
                          (["folder", "--root", str(ilsvrc / "train"), "--full-train"], "--full-train applies to "),
                          (["imagenet100-lt", "--root", str(ilsvrc), "--lt-ratio", "0.5"], "--lt-ratio applies to"),
                          (["folder"], "--root is required")):
        code, output = convert(*args, "--out", str(tmp_path / "store"))
        assert code == 1 and message in output, output


def test_folder_long_tail_follows_the_profile_with_a_seeded_choice(ilsvrc, tmp_path):
    out = tmp_path / "lt"
    code, output = convert("folder", "--root", str(ilsvrc / "train"), "--test-root", str(ilsvrc / "val"),
                           "--lt-ratio", "0.5", "--size", "16", "--seed", "3", "--out", str(out))
    assert code == 0, output
    store = Store.open(out)
    assert store.class_names == list(SYNSETS)
    # exp: 7 * 0.5^(k/2) -> 7, 4, 3 (capped by what each class has: 7, 5, 4)
    assert np.bincount(store.part("train").labels).tolist() == [7, 4, 3]
    assert np.bincount(store.part("test").labels).tolist() == [2, 2, 2]
    assert store.meta["source"]["long_tail"] == {"ratio": 0.5, "profile": "exp", "seed": 3}
    again = tmp_path / "again"
    convert("folder", "--root", str(ilsvrc / "train"), "--lt-ratio", "0.5", "--size", "16", "--seed", "3",
            "--out", str(again))
    assert Store.open(again).meta["parts"]["train"]["sha256"] == store.meta["parts"]["train"]["sha256"]


def test_long_tail_counts_by_formula():
    assert long_tail_counts(500, 10, 0.01, "exp") == [int(500 * 0.01 ** (k / 9)) for k in range(10)]
    assert long_tail_counts(100, 4, 0.1, "step") == [100, 100, 10, 10]
    with pytest.raises(FastltError, match="ratio"):
        long_tail_counts(100, 4, 0.0, "exp")


def test_the_published_imagenet100_lists_share_one_class_mapping_and_one_label_per_image(tmp_path):
    files = {name: PUBLISHED / file for name, file in IMAGENET100_LISTS.items()}
    lists, class_names = image_lists(tmp_path, files)
    assert len(class_names) == 100 and len(set(class_names)) == 100 and all(n.startswith("n") for n in class_names)
    sizes = {name: len(images.paths) for name, images in lists.items()}
    assert sizes == {"lt": 12205, "balanced": 12200, "fewshot": 1200, "val": 2000, "test": 5000}
    counts = np.bincount(lists["lt"].labels, minlength=100)
    assert counts.max() == 1280 and counts.min() == 6
    assert all(path.startswith("val/") for path in lists["test"].paths)
    test = lists.pop("test")
    union = union_of_lists(lists, files)  # the train part of a converted store
    assert len(union.paths) == 26143 and not set(union.paths) & set(test.paths)
    assert not set(lists["val"].paths) & set(lists["lt"].paths)  # held-out images never pretrain


def test_decode_square_keeps_the_centre_of_the_shorter_side(tmp_path):
    stripes = np.zeros((40, 80, 3), dtype=np.uint8)
    stripes[:, 20:60] = 255  # the centre 40 columns are white: exactly the centre square
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    square = decode_square(tmp_path / "stripes.png", 20)
    assert square.shape == (20, 20, 3) and square[:, 2:-2].min() >= 250 and square[:, [0, -1]].max() < 255

