"""NativeLoader: epochs cover the split, drop_last, on-device permutations from the generator, layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastlt.data.loader import Batch, NativeLoader
from fastlt.data.store import Store, StorePart
from fastlt.errors import FastltError


@pytest.fixture(scope="module")
def part() -> StorePart:
    rng = np.random.default_rng(0)
    return StorePart(images=rng.integers(0, 256, (60, 6, 5, 3), dtype=np.uint8), labels=rng.integers(0, 4, 60))


SPLIT = np.array([3, 59, 10, 11, 0, 42, 7, 8, 30, 31, 32, 50, 51, 17, 18, 19, 20, 44, 45, 46, 2, 1, 9])  # 23


def make_loader(part: StorePart, seed: int = 0, indices=SPLIT, batch_size: int = 5, **kwargs) -> NativeLoader:
    return NativeLoader(part, indices, batch_size, "cpu", torch.Generator().manual_seed(seed), **kwargs)


def epoch_indices(loader: NativeLoader) -> list[int]:
    return [i for batch in loader for i in batch.indices.tolist()]


def test_every_index_once_per_epoch_without_drop_last(part):
    loader = make_loader(part, drop_last=False)
    assert len(loader) == 5 and loader.num_samples == len(SPLIT)
    sizes = [len(batch.labels) for batch in loader]
    assert sizes == [5, 5, 5, 5, 3]
    for _ in range(2):
        assert sorted(epoch_indices(loader)) == sorted(SPLIT.tolist())


@pytest.mark.parametrize("count, batch_size, sizes", [
    (21, 5, [5, 5, 5, 6]),  # one leftover sample joins the last full batch: batch norm cannot train on one
    (22, 5, [5, 5, 5, 5, 2]),
    (20, 5, [5, 5, 5, 5]),
    (3, 5, [3]),
])
def test_last_batch_is_kept_and_a_single_leftover_is_folded(part, count, batch_size, sizes):
    loader = make_loader(part, indices=SPLIT[:count], batch_size=batch_size, drop_last=False)
    assert [len(batch.labels) for batch in loader] == sizes and len(loader) == len(sizes)
    assert sorted(epoch_indices(loader)) == sorted(SPLIT[:count].tolist())  # no sample repeated or skipped


def test_drop_last_gives_full_batches_of_distinct_indices(part):
    loader = make_loader(part, drop_last=True)
    assert len(loader) == len(SPLIT) // 5
    batches = list(loader)
    assert len(batches) == 4 and all(len(b.indices) == 5 for b in batches)
    seen = epoch_indices(loader)
    assert len(set(seen)) == 20 and set(seen) <= set(SPLIT.tolist())


def test_permutations_differ_per_epoch_and_follow_the_generator(part):
    loader = make_loader(part, seed=1, drop_last=False)
    first, second = epoch_indices(loader), epoch_indices(loader)
    assert first != second
    again = make_loader(part, seed=1, drop_last=False)
    assert epoch_indices(again) == first and epoch_indices(again) == second
    assert epoch_indices(make_loader(part, seed=2, drop_last=False)) != first
    # The order is one randperm of the split positions drawn from the generator.
    order = torch.randperm(len(SPLIT), generator=torch.Generator().manual_seed(1)).numpy()
    assert first == SPLIT[order].tolist()


def test_batches_match_the_store_part(part):
    for batch in make_loader(part, drop_last=False):
        assert isinstance(batch, Batch)
        assert batch.images.dtype == torch.uint8 and batch.images.shape[1:] == (3, 6, 5)
        assert batch.images.is_contiguous(memory_format=torch.channels_last)
        assert batch.labels.dtype == torch.int64 and batch.indices.dtype == torch.int64
        rows = batch.indices.numpy()
        np.testing.assert_array_equal(batch.images.numpy(), part.images[rows].transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(batch.labels.numpy(), part.labels[rows])


def test_no_shuffle_keeps_split_order_and_none_means_all(part):
    assert epoch_indices(make_loader(part, shuffle=False, drop_last=False)) == SPLIT.tolist()
    everything = make_loader(part, indices=None, batch_size=7, shuffle=False, drop_last=False)
    assert everything.num_samples == 60 and epoch_indices(everything) == list(range(60))


def test_batch_larger_than_split_with_drop_last_is_an_error(part):
    with pytest.raises(FastltError, match="batch size 24"):
        make_loader(part, batch_size=24, drop_last=True)
    assert len(make_loader(part, batch_size=24, drop_last=False)) == 1


def test_loads_from_a_memory_mapped_store(digits_store):
    store_part = Store.open(digits_store).part("train")
    loader = NativeLoader(store_part, np.arange(0, 100, 3), 8, "cpu", torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    np.testing.assert_array_equal(batch.images.permute(0, 2, 3, 1).numpy(), store_part.images[batch.indices.numpy()])
