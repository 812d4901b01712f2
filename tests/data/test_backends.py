"""FFCV and DALI stores and loaders against the native ones: same rows, same order, pixels within JPEG tolerance.

The test extra installs DALI; `make install` also installs FFCV where its system libraries can be
installed. A backend that is missing is skipped with the reason (shown by `pytest -rs`).
"""
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastlt.data.backends import make_loader
from fastlt.data.loader import NativeLoader
from fastlt.data.sources import make_coloured_digits
from fastlt.data.store import Store, write_native_store
from fastlt.errors import FastltError
from fastlt.recipe import recipe_from_dict
from fastlt.train.trainer import pretrain

HAVE = {"ffcv": importlib.util.find_spec("ffcv") is not None,
        "dali": importlib.util.find_spec("nvidia.dali") is not None}
NEEDS = {name: pytest.mark.skipif(not present, reason=f"{name} is not installed (see the README's Set up section)")
         for name, present in HAVE.items()}
# (backend, FFCV image format): JPEG for both, and FFCV's raw pixels, which must equal the native store's.
STORES = [pytest.param(("ffcv", "jpg"), marks=NEEDS["ffcv"], id="ffcv-jpg"),
          pytest.param(("ffcv", "raw"), marks=NEEDS["ffcv"], id="ffcv-raw"),
          pytest.param(("dali", "jpg"), marks=NEEDS["dali"], id="dali")]
QUALITY = 95
DIGITS_SPLIT = Path(__file__).resolve().parents[2] / "splits" / "digits_lt" / "ratio10_seed1.npy"


def jpeg_round_trip_error(images: np.ndarray) -> float:
    """Mean absolute error of encoding with PIL at QUALITY and decoding again: the JPEG loss itself."""
    errors = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=QUALITY)
        errors.append(np.abs(np.asarray(Image.open(buffer).convert("RGB")).astype(int) - image.astype(int)).mean())
    return float(np.mean(errors))


@pytest.fixture(scope="module")
def digits_parts():
    return make_coloured_digits(0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, digits_parts):
    """The digits as a native store and, lazily, as each compressed store."""
    parts, class_names = digits_parts
    folder = tmp_path_factory.mktemp("backends")
    made = {"native": write_native_store(folder / "native", "digits", class_names, parts, {"dataset": "digits"})}

    def get(backend: str, image_format: str = "jpg"):
        key = f"{backend}-{image_format}"
        if key not in made:
            made[key] = write_native_store(folder / key, "digits", class_names, parts, {"dataset": "digits"},
                                           backend=backend, encode={"image_format": image_format,
                                                                    "quality": QUALITY, "workers": 2})
        return made[key]
    get.native = made["native"]
    return get


@pytest.mark.parametrize("store_kind", STORES)
def test_a_store_holds_the_native_rows_labels_and_pixels_within_jpeg_tolerance(stores, store_kind):
    backend, image_format = store_kind
    native, other = Store.open(stores.native), Store.open(stores(backend, image_format))
    assert other.backend == backend and other.meta["image_shape"] == native.meta["image_shape"]
    for part in ("train", "test"):
        expected, got = native.part(part), other.part(part, verify=True)
        assert np.array_equal(got.labels, expected.labels) and len(got.images) == len(expected.images)
        decoded = np.asarray(got.images)
        assert decoded.shape == expected.images.shape and decoded.dtype == np.uint8
        difference = np.abs(decoded.astype(int) - expected.images.astype(int))
        if image_format == "raw":
            assert difference.max() == 0
        else:  # as close as PIL's own JPEG round trip at that quality, within a level on average
            assert difference.mean() <= jpeg_round_trip_error(expected.images[:200]) + 1.0, difference.mean()
        rows = np.array([5, 0, 17, 5])
        assert np.array_equal(got.images[rows], decoded[rows]) and np.array_equal(got.images[3], decoded[3])
        assert np.array_equal(got.images[2:6], decoded[2:6])


@NEEDS["dali"]
def test_dali_decodes_the_stored_jpeg_as_pil_does_within_a_level_or_two(stores):
    """The stored bytes are ordinary JPEGs: DALI's decoder and PIL's read them within decoder rounding."""
    store = Store.open(stores("dali"))
    offsets = np.load(store.path / "train_offsets.npy")
    blob = (store.path / "train_jpeg.bin").read_bytes()
    decoded = store.part("train").images[np.arange(20)]
    for row in range(20):
        with Image.open(io.BytesIO(blob[offsets[row]:offsets[row + 1]])) as image:
            by_pil = np.asarray(image.convert("RGB"))
        assert np.abs(decoded[row].astype(int) - by_pil.astype(int)).max() <= 2


@pytest.mark.parametrize("store_kind", STORES)
@pytest.mark.parametrize("batch_size, drop_last, shard", [(100, False, (0, 1)), (63, False, (0, 1)),
                                                          (64, True, (0, 1)), (63, False, (1, 2)),
                                                          (64, False, (2, 3))])
def test_loaders_take_the_native_order_and_see_every_index_once(stores, store_kind, batch_size, drop_last, shard):
    """Every backend's batches (this rank's share of them, with ``shard``) equal NativeLoader's."""
    backend, image_format = store_kind
    threads = torch.get_num_threads()
    native, other = Store.open(stores.native), Store.open(stores(backend, image_format))
    split = np.sort(np.random.default_rng(0).choice(len(native.labels("train")), 253, replace=False))  # 253 = 4*63+1
    expected = NativeLoader(native.part("train"), split, batch_size, "cpu", torch.Generator().manual_seed(3),
                            drop_last=drop_last, shard=shard)
    loader = make_loader(other, "train", split, batch_size, torch.device("cpu"), torch.Generator().manual_seed(3),
                         drop_last=drop_last, shard=shard)
    assert len(loader) == len(expected) and loader.num_samples == 253
    labels = other.labels("train")
    for _ in range(2):  # two epochs: the permutations move on together
        seen = []
        for want, got in zip(expected, loader, strict=True):
            assert torch.equal(got.indices, want.indices) and torch.equal(got.labels, want.labels)
            assert got.shard_sizes == want.shard_sizes
            assert got.images.shape == want.images.shape and got.images.dtype == torch.uint8
            assert np.array_equal(got.labels.numpy(), labels[got.indices.numpy()])
            if image_format == "raw":
                assert torch.equal(got.images, want.images)
            seen.append(got.indices.numpy().copy())
        seen = np.concatenate(seen)
        assert len(set(seen.tolist())) == len(seen)  # nothing repeated
        if not drop_last and shard[1] == 1:
            assert sorted(seen.tolist()) == split.tolist()  # nothing skipped
    assert torch.get_num_threads() == threads  # FFCV resets torch's thread count; the loader puts it back


@NEEDS["ffcv"]
def test_pretraining_from_ffcv_raw_equals_pretraining_from_native(stores, tmp_path):
    """Same batches, same pixels: the run's losses and held-out kNN match bit for bit (this caught FFCV
    changing torch's thread count, which changes the sums' order)."""
    losses = []
    for name, store in (("native", stores.native), ("ffcv", stores("ffcv", "raw"))):
        recipe = recipe_from_dict({
            "data": {"store": str(store), "split": str(DIGITS_SPLIT)},
            "model": {"width": 4, "projector_hidden": 32, "projector_out": 16},
            "optim": {"lr": 0.1, "warmup_epochs": 1},
            "train": {"epochs": 1, "batch_size": 100, "out_dir": str(tmp_path), "name": name, "progress": False,
                      "precision": "fp32", "device": "cpu", "monitor_every": 1},
        }, "test")
        (line,) = map(json.loads, (pretrain(recipe) / "metrics.jsonl").read_text().splitlines())
        losses.append({key: value for key, value in line.items() if "second" not in key})
    assert losses[0] == losses[1] and "monitor_knn" in losses[0]


@NEEDS["dali"]
def test_a_truncated_dali_file_or_a_damaged_store_file_is_named(stores, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(stores("dali"), copy)
    blob = copy / "train_jpeg.bin"
    blob.write_bytes(blob.read_bytes()[:-100])
    with pytest.raises(FastltError, match="train_jpeg.bin: checksum does not match"):
        Store.open(copy).part("train", verify=True)
    with pytest.raises(FastltError, match="train_jpeg.bin: does not match its offsets"):
        Store.open(copy).part("train")
    shutil.rmtree(copy)
    shutil.copytree(stores("dali"), copy)
    offsets = np.load(copy / "train_offsets.npy")
    pristine = blob.read_bytes()

    def first_batch_with(start: int, stop: int) -> None:
        damaged = bytearray(pristine)
        damaged[offsets[3] + start:offsets[3] + stop] = bytes(stop - start)  # zeroed in place: same size
        blob.write_bytes(bytes(damaged))
        next(iter(make_loader(Store.open(copy), "train", None, 64, torch.device("cpu"), torch.Generator(),
                              shuffle=False)))

    # DALI 2.4 may crash the process rather than raise on a damaged image, so the damage that reaches
    # it is not tested here; what is: an image without its start or end marker never reaches it.
    with pytest.raises(FastltError, match="train_jpeg.bin: image 3 is not a whole JPEG"):
        first_batch_with(0, 40)
    with pytest.raises(FastltError, match="train_jpeg.bin: image 2 is not a whole JPEG"):
        first_batch_with(-2, 0)  # the end marker of the image before it


@NEEDS["ffcv"]
def test_a_truncated_beton_is_a_one_line_error_naming_it(stores, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(stores("ffcv"), copy)
    beton = copy / "train.beton"
    beton.write_bytes(beton.read_bytes()[:beton.stat().st_size // 2])
    store = Store.open(copy)
    with pytest.raises(FastltError, match="train.beton: not a readable FFCV file"):
        make_loader(store, "train", None, 64, torch.device("cpu"), torch.Generator())
    with pytest.raises(FastltError, match="train.beton: checksum does not match"):
        store.part("train", verify=True)


def test_a_missing_backend_is_one_line_with_the_install_command(monkeypatch, stores):
    import sys

    from fastlt.data import dali_backend, ffcv_backend

    monkeypatch.setitem(sys.modules, "ffcv", None)  # import ffcv now raises ImportError
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(FastltError, match=r"FFCV is not installed .*pip install 'fastlt\[ffcv\]'"):
        ffcv_backend.require_ffcv()
    with pytest.raises(FastltError, match=r"DALI is not installed .*pip install 'fastlt\[dali\]'"):
        dali_backend.require_dali()


@NEEDS["dali"]
def test_dali_encoding_in_worker_processes_writes_the_same_bytes(digits_parts, tmp_path):
    from fastlt.data.dali_backend import ENCODE_CHUNK, write_jpeg_part

    images = digits_parts[0]["train"].images[:ENCODE_CHUNK + 7]  # more than one chunk, the last one short
    for workers in (1, 2):
        (tmp_path / str(workers)).mkdir()
        write_jpeg_part(tmp_path / str(workers), "train", images, QUALITY, workers)
    for file in ("train_jpeg.bin", "train_offsets.npy"):
        assert (tmp_path / "1" / file).read_bytes() == (tmp_path / "2" / file).read_bytes()


@pytest.mark.parametrize("store_kind", STORES)
def test_a_batch_handed_out_stays_as_it_was_while_later_ones_come(stores, store_kind):
    """FFCV refills its output buffers a few batches later and DALI reuses its own: a batch kept for a whole
    epoch (as a loop running ahead of the GPU keeps it) still holds its pixels, labels and indices."""
    backend, image_format = store_kind
    store = Store.open(stores(backend, image_format))

    def epoch():
        return make_loader(store, "train", None, 32, torch.device("cpu"), torch.Generator().manual_seed(5))

    at_once = [tuple(tensor.clone() for tensor in batch[:3]) for batch in epoch()]
    kept = list(epoch())
    assert len(kept) > 8  # more batches than FFCV has buffers (batches_ahead + 2)
    for (images, labels, indices), batch in zip(at_once, kept, strict=True):
        assert torch.equal(batch.images, images) and torch.equal(batch.labels, labels)
        assert torch.equal(batch.indices, indices)


@NEEDS["dali"]
def test_dali_decodes_ahead_and_gathers_labels_on_the_device(stores, monkeypatch):
    """DALI holds PREFETCH batches scheduled: the first batch handed out has the next one's images already
    requested. Labels and indices come from the split's, put on the device once: per batch, only the decoded
    images are made from host memory. A pass left early leaves the next one whole."""
    from fastlt.data import dali_backend

    native, store = Store.open(stores.native), Store.open(stores("dali"))
    split = np.load(DIGITS_SPLIT)
    requested = []
    encoded = dali_backend._JpegPart.encoded
    monkeypatch.setattr(dali_backend._JpegPart, "encoded",
                        lambda part, rows: requested.append(rows) or encoded(part, rows))
    loader = make_loader(store, "train", split, 50, torch.device("cpu"), torch.Generator().manual_seed(2))
    expected = NativeLoader(native.part("train"), split, 50, "cpu", torch.Generator().manual_seed(2))
    batches = iter(loader)
    next(batches)
    assert len(requested) == dali_backend.PREFETCH >= 2
    del batches  # left after one batch
    next(iter(expected))  # the native loader's generator one epoch on, as the DALI loader's is
    made = []
    from_numpy = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda array: made.append(array.shape) or from_numpy(array))
    for want, got in zip(expected, loader, strict=True):
        assert torch.equal(got.indices, want.indices) and torch.equal(got.labels, want.labels)
    assert [shape[1:] for shape in made] == [(32, 32, 3)] * len(loader)  # the images, nothing else


def test_decoders_share_the_cores_among_a_nodes_processes(monkeypatch):
    from fastlt.data import backends

    monkeypatch.setattr(backends.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert backends.decode_threads() == 16
    for processes, threads in (("1", 16), ("8", 2), ("3", 5), ("32", 1)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
        assert backends.decode_threads() == threads
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "eight")
    with pytest.raises(FastltError, match="LOCAL_WORLD_SIZE 'eight': not an integer"):
        backends.decode_threads()
