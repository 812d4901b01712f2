"""Native store: layout and meta, checksums, atomic writes, never clobbering a user's folder."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import fastlt.data.store as store_module
from fastlt.data.splits import load_split
from fastlt.data.store import Store, StorePart, write_native_store
from fastlt.errors import FastltError


def tiny_parts(seed: int = 0) -> dict[str, StorePart]:
    rng = np.random.default_rng(seed)
    return {
        "train": StorePart(rng.integers(0, 256, (12, 8, 6, 3), dtype=np.uint8), rng.integers(0, 3, 12)),
        "test": StorePart(rng.integers(0, 256, (5, 8, 6, 3), dtype=np.uint8), np.array([0, 1, 2, 2, 1])),
    }


def write(out: Path, seed: int = 0, **kwargs) -> Path:
    source = {"made_by": "test", "seed": seed}
    return write_native_store(out, "tiny", ["a", "b", "c"], tiny_parts(seed), source, **kwargs)


def test_layout_meta_counts_and_checksums(tmp_path):
    out = write(tmp_path / "store")
    parts = tiny_parts()
    meta = json.loads((out / "meta.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["meta.json", "train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy"])
    assert meta["format"] == "fastlt-native" and meta["version"] == 1 and meta["name"] == "tiny"
    assert meta["class_names"] == ["a", "b", "c"] and meta["num_classes"] == 3 and meta["image_shape"] == [8, 6, 3]
    assert meta["source"] == {"made_by": "test", "seed": 0}
    for name, part in parts.items():
        entry = meta["parts"][name]
        counter = Counter(part.labels.tolist())
        assert entry["count"] == len(part.labels)
        assert entry["class_counts"] == [counter[c] for c in range(3)]
        for kind in ("images", "labels"):
            assert entry["sha256"][kind] == hashlib.sha256((out / f"{name}_{kind}.npy").read_bytes()).hexdigest()
        assert np.load(out / f"{name}_labels.npy").dtype == np.int64


def test_open_and_read_parts(tmp_path):
    store = Store.open(write(tmp_path / "store"))
    assert store.name == "tiny" and store.class_names == ["a", "b", "c"] and store.num_classes == 3
    assert sorted(store.parts) == ["test", "train"] and store.path == tmp_path / "store"
    part = store.part("train", verify=True)
    assert isinstance(part.images, np.memmap)
    np.testing.assert_array_equal(part.images, tiny_parts()["train"].images)
    np.testing.assert_array_equal(part.labels, tiny_parts()["train"].labels)
    with pytest.raises(FastltError, match="no part 'val'"):
        store.part("val")


def test_verify_catches_a_damaged_file(tmp_path):
    out = write(tmp_path / "store")
    images = out / "train_images.npy"
    data = bytearray(images.read_bytes())
    data[-1] ^= 0xFF  # one pixel byte
    images.write_bytes(bytes(data))
    store = Store.open(out)
    store.part("train")  # without verify the shape still reads
    with pytest.raises(FastltError, match=f"{images}: checksum"):
        store.part("train", verify=True)


def test_open_rejects_what_is_not_a_store(tmp_path):
    with pytest.raises(FastltError, match="no such store"):
        Store.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FastltError, match="no meta.json"):
        Store.open(tmp_path / "plain")
    out = write(tmp_path / "store")
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(FastltError, match="version 99"):
        Store.open(out)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(FastltError, match="meta.json: unreadable"):
        Store.open(out)


def test_existing_store_is_kept_unless_overwrite(tmp_path):
    out = write(tmp_path / "store", seed=0)
    before = (out / "meta.json").read_bytes()
    with pytest.raises(FastltError, match="exists already"):
        write(out, seed=1)
    assert (out / "meta.json").read_bytes() == before
    write(out, seed=1, overwrite=True)
    np.testing.assert_array_equal(Store.open(out).part("train").images, tiny_parts(1)["train"].images)
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # no staging or retired folder left


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(tmp_path):
    folder = tmp_path / "my_photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FastltError, match="not a fastlt store"):
        write(folder, overwrite=True)
    assert (folder / "holiday.jpg").read_bytes() == b"precious"


def fail_on_third_save(monkeypatch):
    """The third file synced to disk fails, as a full disk would."""
    calls = []
    real = store_module._fsync_file

    def flaky(path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real(path)

    monkeypatch.setattr(store_module, "_fsync_file", flaky)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    fail_on_third_save(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        write(tmp_path / "store")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_store(tmp_path, monkeypatch):
    out = write(tmp_path / "store", seed=0)
    fail_on_third_save(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        write(out, seed=1, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["store"]
    kept = Store.open(out).part("train", verify=True)
    np.testing.assert_array_equal(kept.images, tiny_parts(0)["train"].images)


def test_invalid_parts_are_refused_before_writing(tmp_path):
    good = tiny_parts()
    bad_parts = {
        "float images": {"train": StorePart(good["train"].images.astype(np.float32), good["train"].labels)},
        "grey images": {"train": StorePart(good["train"].images[..., 0], good["train"].labels)},
        "label count": {"train": StorePart(good["train"].images, good["train"].labels[:3])},
        "label range": {"train": StorePart(good["train"].images, np.full(12, 3))},
        "sizes differ": {"train": good["train"], "test": StorePart(good["test"].images[:, :4], good["test"].labels)},
    }
    for problem, parts in bad_parts.items():
        with pytest.raises(FastltError):
            write_native_store(tmp_path / "store", "tiny", ["a", "b", "c"], parts, {})
        assert list(tmp_path.iterdir()) == [], problem


def test_index_lists_are_kept_with_counts_and_checksums(tmp_path):
    parts = tiny_parts()
    with store_module.StoreWriter(tmp_path / "store", "tiny", ["a", "b", "c"], {}) as writer:
        for name, part in parts.items():
            writer.add_part(name, part)
        writer.add_list("few", "train", np.array([7, 2, 5]), {"listed": 4})
        for rows, problem in (([1, 1], "distinct"), ([12], "rows of part 'train' \\(0..11\\)"), ([-1], "distinct")):
            with pytest.raises(FastltError, match=problem):
                writer.add_list("bad", "train", np.array(rows))
        with pytest.raises(FastltError, match="no part 'val' to index"):
            writer.add_list("bad", "val", np.array([0]))
        store = Store.open(writer.commit())
    assert store.lists == ["few"] and np.load(store.list_file("few")).tolist() == [7, 2, 5]
    entry = store.meta["lists"]["few"]
    assert entry["part"] == "train" and entry["count"] == 3 and entry["listed"] == 4
    assert entry["class_counts"] == np.bincount(parts["train"].labels[[7, 2, 5]], minlength=3).tolist()
    assert entry["sha256"] == hashlib.sha256(store.list_file("few").read_bytes()).hexdigest()
    with pytest.raises(FastltError, match="many.npy: no such split file \\(the store keeps the lists few\\)"):
        load_split(store.list_file("many"), 12)
    plain = Store.open(write(tmp_path / "plain"))
    with pytest.raises(FastltError, match="few.npy: no such split file \\(the store keeps no lists\\)"):
        load_split(plain.list_file("few"), 12)
