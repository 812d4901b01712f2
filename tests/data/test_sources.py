"""CIFAR tarball reading (tarball and extracted folder), bad sources, download, coloured digits."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastlt.data.sources import download_cifar, make_coloured_digits, read_cifar
from fastlt.data.store import Store, write_native_store
from fastlt.errors import FastltError

CIFAR_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def expected_of(tarball: Path) -> dict[str, np.ndarray]:
    with np.load(tarball.parent / "expected.npz") as data:
        return dict(data)


def extracted(tarball: Path, tmp_path: Path) -> Path:
    with tarfile.open(tarball) as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path


def assert_matches_packed(parts: dict, class_names: list[str], expected: dict) -> None:
    assert set(parts) == {"train", "test"}
    assert class_names == [str(name) for name in expected["class_names"]]
    for name in ("train", "test"):
        assert parts[name].images.dtype == np.uint8 and parts[name].labels.dtype == np.int64
        np.testing.assert_array_equal(parts[name].images, expected[f"{name}_images"])
        np.testing.assert_array_equal(parts[name].labels, expected[f"{name}_labels"])


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
@pytest.mark.parametrize("form", ["tarball", "extracted parent", "extracted folder"])
def test_read_cifar_returns_what_was_packed_in_pickle_order(variant, form, request, tmp_path):
    tarball = request.getfixturevalue(f"{variant}_tarball")
    if form == "tarball":
        source = tarball
    else:
        source = extracted(tarball, tmp_path)
        if form == "extracted folder":
            source = source / CIFAR_FOLDER[variant]
    parts, class_names = read_cifar(source, variant)
    assert_matches_packed(parts, class_names, expected_of(tarball))


def test_pixel_layout_is_red_green_blue_planes(cifar10_tarball):
    """Pixel (y, x, c) of image n is byte c*1024 + y*32 + x of its row, read straight from the pickle."""
    with tarfile.open(cifar10_tarball) as archive:
        raw = pickle.load(archive.extractfile("cifar-10-batches-py/data_batch_2"), encoding="bytes")
    parts, _ = read_cifar(cifar10_tarball, "cifar10")
    first_of_batch_2 = len(raw[b"labels"])  # batch 1 has the same size
    for n, y, x, c in [(0, 0, 0, 0), (3, 31, 0, 1), (7, 5, 30, 2), (99, 31, 31, 2)]:
        assert parts["train"].images[first_of_batch_2 + n, y, x, c] == raw[b"data"][n, c * 1024 + y * 32 + x]
    assert parts["train"].labels[first_of_batch_2: 2 * first_of_batch_2].tolist() == raw[b"labels"]


def test_converted_store_round_trip(cifar100_tarball, tmp_path):
    parts, class_names = read_cifar(cifar100_tarball, "cifar100")
    out = write_native_store(tmp_path / "c100", "cifar100", class_names, parts, {"source": str(cifar100_tarball)})
    store = Store.open(out)
    expected = expected_of(cifar100_tarball)
    assert store.class_names == [str(name) for name in expected["class_names"]] and store.num_classes == 100
    for name in ("train", "test"):
        part = store.part(name, verify=True)
        np.testing.assert_array_equal(part.images, expected[f"{name}_images"])
        np.testing.assert_array_equal(part.labels, expected[f"{name}_labels"])


def rebuilt_tarball(source: Path, out: Path, change: dict[str, bytes | None]) -> Path:
    """Copy of a tarball with members replaced (bytes) or dropped (None)."""
    with tarfile.open(source) as old, tarfile.open(out, "w:gz") as new:
        for member in old:
            if member.name in change:
                if change[member.name] is None:
                    continue
                member.size = len(change[member.name])
                new.addfile(member, io.BytesIO(change[member.name]))
            else:
                new.addfile(member, old.extractfile(member) if member.isfile() else None)
    return out


def bad_batch(fields: dict) -> bytes:
    """A CIFAR-10 batch of 10 black images with some fields replaced."""
    return pickle.dumps({b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10)), **fields}, protocol=2)


class Exploit:
    """Pickles into a call of os.system: a safe reader must refuse it before calling anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def bad_sources(tarball: Path, tmp_path: Path) -> dict[str, Path]:
    tmp_path.mkdir()
    whole = tarball.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not an archive" * 100)
    plain_gzip = tmp_path / "plain.tar.gz"
    plain_gzip.write_bytes(gzip.compress(b"not a tar inside"))
    folder = "cifar-10-batches-py"
    zero_rows = np.zeros((10, 3072), np.uint8)
    return {
        "missing": tmp_path / "nowhere.tar.gz",
        "truncated": truncated,
        "garbage": garbage,
        "gzip without tar": plain_gzip,
        "missing member": rebuilt_tarball(tarball, tmp_path / "no_test.tar.gz", {f"{folder}/test_batch": None}),
        "wrong shape": rebuilt_tarball(tarball, tmp_path / "shape.tar.gz",
                                       {f"{folder}/data_batch_3": bad_batch({b"data": zero_rows[:, :3000]})}),
        "wrong dtype": rebuilt_tarball(tarball, tmp_path / "dtype.tar.gz",
                                       {f"{folder}/data_batch_3": bad_batch({b"data": zero_rows.astype(np.float32)})}),
        "label count": rebuilt_tarball(tarball, tmp_path / "count.tar.gz",
                                       {f"{folder}/data_batch_1": bad_batch({b"labels": [0, 1]})}),
        "label range": rebuilt_tarball(tarball, tmp_path / "range.tar.gz",
                                       {f"{folder}/data_batch_1": bad_batch({b"labels": [10] * 10})}),
        "not a pickle": rebuilt_tarball(tarball, tmp_path / "notpickle.tar.gz",
                                        {f"{folder}/data_batch_5": b"\x80\x02junk"}),
        "class names": rebuilt_tarball(tarball, tmp_path / "names.tar.gz",
                                       {f"{folder}/batches.meta": pickle.dumps({b"label_names": [b"a", b"b"]})}),
        "exploit": rebuilt_tarball(tarball, tmp_path / "exploit.tar.gz",
                                   {f"{folder}/data_batch_1": pickle.dumps(Exploit(tmp_path / "pwned"))}),
    }


def test_bad_sources_raise_one_line_naming_the_file_and_write_nothing(cifar10_tarball, tmp_path):
    sources = bad_sources(cifar10_tarball, tmp_path / "sources")
    stores = tmp_path / "stores"
    stores.mkdir()
    for problem, source in sources.items():
        out = stores / problem.replace(" ", "_")
        with pytest.raises(FastltError) as caught:
            parts, names = read_cifar(source, "cifar10")  # the convert flow: read fully, then write
            write_native_store(out, "cifar10", names, parts, {})
        message = str(caught.value)
        assert str(source) in message and "\n" not in message, (problem, message)
        assert len(message.replace(str(source), "")) < 160, (problem, message)
    assert list(stores.iterdir()) == []
    assert not (tmp_path / "sources" / "pwned").exists()


def test_pickles_written_by_numpy_1_are_read(cifar10_tarball, tmp_path):
    """The official pickles name numpy.core.multiarray (numpy < 2); numpy 2 only has numpy._core."""
    folder = "cifar-10-batches-py"
    with tarfile.open(cifar10_tarball) as archive:
        payload = archive.extractfile(f"{folder}/data_batch_4").read()
    old_style = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old_style != payload
    source = rebuilt_tarball(cifar10_tarball, tmp_path / "old.tar.gz", {f"{folder}/data_batch_4": old_style})
    parts, _ = read_cifar(source, "cifar10")
    np.testing.assert_array_equal(parts["train"].images, expected_of(cifar10_tarball)["train_images"])


def test_wrong_variant_is_refused(cifar100_tarball):
    with pytest.raises(FastltError, match="missing member cifar-10-batches-py"):
        read_cifar(cifar100_tarball, "cifar10")
    with pytest.raises(FastltError, match="cifar1000"):
        read_cifar(cifar100_tarball, "cifar1000")


def test_download_checks_md5_then_renames(cifar10_tarball, tmp_path):
    url = cifar10_tarball.as_uri()
    good_md5 = hashlib.md5(cifar10_tarball.read_bytes()).hexdigest()
    bad_dir = tmp_path / "bad"
    with pytest.raises(FastltError, match="MD5"):
        download_cifar("cifar10", bad_dir, url=url, md5="0" * 32)
    assert list(bad_dir.iterdir()) == []  # no tarball and no partial file

    good_dir = tmp_path / "good"
    path = download_cifar("cifar10", good_dir, url=url, md5=good_md5)
    assert path == good_dir / "cifar-10-python.tar.gz"
    assert path.read_bytes() == cifar10_tarball.read_bytes()
    assert [p.name for p in good_dir.iterdir()] == [path.name]
    # Already there with the right checksum: reused without touching the network.
    assert download_cifar("cifar10", good_dir, url=(tmp_path / "gone.tar.gz").as_uri(), md5=good_md5) == path


def test_download_errors(cifar10_tarball, tmp_path):
    with pytest.raises(FastltError, match="download failed"):
        download_cifar("cifar100", tmp_path / "a", url=(tmp_path / "gone.tar.gz").as_uri(), md5="0" * 32)
    assert list((tmp_path / "a").iterdir()) == []
    shutil.copy(cifar10_tarball, tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(FastltError, match="exists but its MD5"):
        download_cifar("cifar10", tmp_path, url=cifar10_tarball.as_uri(), md5="0" * 32)


def test_official_checksums_are_the_published_ones():
    from fastlt.data.sources import CIFAR_DOWNLOADS

    assert CIFAR_DOWNLOADS["cifar10"][1] == "c58f30108f718f92721af3b95e74349a"
    assert CIFAR_DOWNLOADS["cifar100"][1] == "eb9058c3a382ffc7106e4002c42a8d85"


@pytest.fixture(scope="module")
def coloured_digits():
    return make_coloured_digits(0)


def test_coloured_digits_shapes_and_stratified_split(coloured_digits):
    from sklearn.datasets import load_digits

    parts, class_names = coloured_digits
    assert class_names == [str(d) for d in range(10)]
    total = np.bincount(load_digits().target, minlength=10)
    train = np.bincount(parts["train"].labels, minlength=10)
    test = np.bincount(parts["test"].labels, minlength=10)
    np.testing.assert_array_equal(train + test, total)
    assert np.all(np.abs(train - total * 2 / 3) <= 1)
    for part in parts.values():
        assert part.images.dtype == np.uint8 and part.images.shape[1:] == (32, 32, 3)
        assert part.labels.dtype == np.int64


def test_coloured_digits_follow_the_documented_recipe(coloured_digits):
    """Rebuilt independently with PIL's bilinear resize and the documented random draws."""
    from sklearn.datasets import load_digits

    parts, _ = coloured_digits
    digits = load_digits()
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, size=(len(digits.target), 3))
    bg = rng.integers(0, 256, size=(len(digits.target), 3))
    train_ids = []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == digit))
        train_ids += members[: round(len(members) * 2 / 3)].tolist()
    train_ids = sorted(train_ids)
    for row in [0, 1, 500, len(train_ids) - 1]:
        source = train_ids[row]
        small = Image.fromarray(digits.images[source].astype(np.float32), mode="F")
        t = np.zeros((32, 32))
        t[4:28, 4:28] = np.asarray(small.resize((24, 24), Image.BILINEAR)) / 16
        expected = bg[source] * (1 - t[..., None]) + fg[source] * t[..., None]
        assert np.abs(parts["train"].images[row].astype(float) - expected).max() <= 0.51
        assert parts["train"].labels[row] == digits.target[source]


def test_coloured_digits_deterministic_from_seed_and_colours_vary(coloured_digits):
    parts, _ = coloured_digits
    again, _ = make_coloured_digits(0)
    other, _ = make_coloured_digits(1)
    np.testing.assert_array_equal(again["train"].images, parts["train"].images)
    np.testing.assert_array_equal(again["test"].labels, parts["test"].labels)
    assert not np.array_equal(other["train"].images, parts["train"].images)
    corners = parts["train"].images[:, 0, 0].astype(int)  # background colour of each image
    assert len({tuple(c) for c in corners}) > 0.95 * len(corners)
    assert corners.std(axis=0).min() > 60  # uniform 0..255 has std ~74
