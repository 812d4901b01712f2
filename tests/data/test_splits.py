"""Long-tail splits: the SDCLR profile, the invariants of the published splits (checked on them and on
ours), the shipped files, load_split validation, class counts and class groups."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fastlt.data.splits import (
    class_counts,
    class_groups,
    load_split,
    lt_profile,
    make_digits_lt_split,
    make_sdclr_split,
    write_cifar_lt_splits,
    write_shot_subsets,
)
from fastlt.data.store import Store
from fastlt.errors import FastltError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "splits"
N_TRAIN = 50_000
C10_PROFILE = [4500, 2697, 1617, 969, 581, 348, 208, 125, 75, 45]
# variant -> (classes, profile total, D_b per class, S_b per class, val per class, linear-eval train per class)
RULES = {"cifar10": (10, 11_165, 1116, 45, 500, 4500), "cifar100": (100, 9_754, 97, 4, 50, 400)}


@pytest.fixture(scope="module")
def cifar_labels(cifar_train_labels) -> dict[str, np.ndarray]:
    with np.load(cifar_train_labels) as data:
        return {"cifar10": data["c10"].astype(np.int64), "cifar100": data["c100"].astype(np.int64)}


def direct_profile(n_max: int, classes: int, ratio: float) -> list[int]:
    return [math.floor(n_max * (1 / ratio) ** (r / (classes - 1))) for r in range(classes)]


def test_lt_profile_is_the_published_one():
    assert lt_profile(4500, 10, 100).tolist() == C10_PROFILE
    assert sum(C10_PROFILE) == 11_165
    c100 = lt_profile(450, 100, 100)
    assert c100.sum() == 9_754 and c100[0] == 450 and c100[-1] == 4
    assert c100.tolist() == direct_profile(450, 100, 100)
    assert lt_profile(116, 10, 10).tolist() == direct_profile(116, 10, 10)
    assert lt_profile(7, 1, 10).tolist() == [7]
    with pytest.raises(FastltError):
        lt_profile(100, 10, 0.5)


def grouped_by_class(indices: np.ndarray, labels: np.ndarray) -> bool:
    return bool(np.all(np.diff(labels[indices]) >= 0))


def check_sdclr_split(variant: str, labels: np.ndarray, val: np.ndarray, D_i: np.ndarray, D_b: np.ndarray,
                      S_b: np.ndarray) -> None:
    """The published splits' invariants (docs/splits.md), checked with plain set arithmetic."""
    classes, total, balanced, few, _, _ = RULES[variant]
    profile = C10_PROFILE if variant == "cifar10" else direct_profile(450, 100, 100)
    for indices in (D_i, D_b, S_b):
        assert indices.ndim == 1 and len(set(indices.tolist())) == len(indices)
        assert grouped_by_class(indices, labels)
        assert not set(indices.tolist()) & set(val.tolist())
    counts_i = Counter(labels[D_i].tolist())
    assert sorted((counts_i[c] for c in range(classes)), reverse=True) == profile and len(D_i) == total
    assert Counter(labels[D_b].tolist()) == {c: balanced for c in range(classes)}
    assert Counter(labels[S_b].tolist()) == {c: few for c in range(classes)}
    assert set(S_b.tolist()) <= set(D_b.tolist()) & set(D_i.tolist())


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_reference_splits_load_and_have_the_sdclr_invariants(variant, reference_splits, cifar_labels):
    labels = cifar_labels[variant]
    sdclr = reference_splits / "sdclr"
    if variant == "cifar10":
        val = load_split(sdclr / "cifar10" / "valIdxList.npy", N_TRAIN)
        prefix = sdclr / "cifar10_imbSub_with_subsets" / "split"
    else:
        val = load_split(sdclr / "cifar100" / "cifar100_valIdxList.npy", N_TRAIN)
        prefix = sdclr / "cifar100_imbSub_with_subsets" / "cifar100_split"
    derived = json.loads((reference_splits / "derived_class_counts.json").read_text())[variant]
    for k in range(1, 6):
        sets = {kind: load_split(Path(f"{prefix}{k}_{kind}.npy"), N_TRAIN) for kind in ("D_i", "D_b", "S_b")}
        check_sdclr_split(variant, labels, val, **sets)
        for kind, indices in sets.items():
            assert class_counts(indices, labels, RULES[variant][0]).tolist() == derived[f"split{k}_{kind}"]


def test_reference_bcl_shot_lists_are_subsets_of_the_eval_train_list(reference_splits, cifar_labels):
    train = load_split(reference_splits / "sdclr" / "cifar100" / "cifar100_trainIdxList.npy", N_TRAIN)
    assert Counter(cifar_labels["cifar100"][train].tolist()) == {c: 400 for c in range(100)}
    for shots in (100, 50):
        bcl = reference_splits / "bcl" / "cifar100_imbSub_with_subsets"
        subset = load_split(bcl / f"cifar100_split1_test_{shots}shot.npy", N_TRAIN)
        assert set(subset.tolist()) <= set(train.tolist())
        assert Counter(cifar_labels["cifar100"][subset].tolist()) == {c: shots for c in range(100)}


def check_generated_folder(folder: Path, variant: str, labels: np.ndarray, split_ids=(1, 2, 3)) -> None:
    classes, _, _, _, val_per_class, train_per_class = RULES[variant]
    val = load_split(folder / "val_idx.npy", N_TRAIN)
    train = load_split(folder / "train_idx.npy", N_TRAIN)
    assert Counter(labels[val].tolist()) == {c: val_per_class for c in range(classes)}
    assert Counter(labels[train].tolist()) == {c: train_per_class for c in range(classes)}
    assert not set(val.tolist()) & set(train.tolist())
    for k in split_ids:
        sets = {kind: load_split(folder / f"split{k}_{kind}.npy", N_TRAIN) for kind in ("D_i", "D_b", "S_b")}
        check_sdclr_split(variant, labels, val, **sets)
        manifest = json.loads((folder / f"split{k}_D_i.json").read_text())
        assert manifest["kind"] == "D_i" and manifest["split"] == k and manifest["dataset"] == f"{variant}_lt"
        assert manifest["class_counts"] == [Counter(labels[sets["D_i"]].tolist())[c] for c in range(classes)]
        assert manifest["total"] == len(sets["D_i"]) and manifest["ratio"] == 100 and "pool" in manifest
        order = manifest["class_order"]  # class at rank r has the r-th largest count
        assert [manifest["class_counts"][c] for c in order] == sorted(manifest["class_counts"], reverse=True)
        for shots in (100, 50):
            subset = load_split(folder / f"split{k}_{shots}shot.npy", N_TRAIN)
            assert set(subset.tolist()) <= set(train.tolist()) and grouped_by_class(subset, labels)
            assert Counter(labels[subset].tolist()) == {c: shots for c in range(classes)}
    orders = [json.loads((folder / f"split{k}_D_i.json").read_text())["class_order"] for k in split_ids]
    assert len({tuple(order) for order in orders}) == len(orders)  # each split ranks the classes differently


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_shipped_splits_have_the_sdclr_invariants(variant, cifar_labels):
    check_generated_folder(SHIPPED / f"{variant}_lt", variant, cifar_labels[variant], split_ids=(1, 2, 3, 4, 5))


def test_cifar10_shot_subsets_of_the_published_list_are_balanced_subsets_and_reproducible(
        reference_splits, cifar_labels, tmp_path):
    labels = cifar_labels["cifar10"]
    published = load_split(reference_splits / "sdclr" / "cifar10" / "trainIdxList.npy", N_TRAIN)
    written = write_shot_subsets("cifar10", labels, published, "SDCLR's cifar10/trainIdxList.npy", tmp_path)
    shipped = SHIPPED / "cifar10_lt" / "shots_of_published_trainIdxList"
    assert sorted(p.name for p in written) == sorted(p.name for p in shipped.glob("*.npy"))
    assert len(written) == 10
    subsets = {}
    for path in written:
        assert path.read_bytes() == (shipped / path.name).read_bytes()
        subset = load_split(path, N_TRAIN)
        shots = int(path.stem.split("_")[1].removesuffix("shot"))
        assert set(subset.tolist()) <= set(published.tolist()) and grouped_by_class(subset, labels)
        assert Counter(labels[subset].tolist()) == {c: shots for c in range(10)}
        assert "not published" in json.loads(path.with_suffix(".json").read_text())["pool"]
        subsets.setdefault(shots, []).append(frozenset(subset.tolist()))
    assert all(len(set(drawn)) == 5 for drawn in subsets.values())  # five different subsets per shot count


def test_make_splits_tool_regenerates_the_whole_shipped_tree_byte_for_byte(tmp_path):
    """tools/make_splits.py, run as users run it, into an empty folder: every file it writes (splits 1-5 of both
    CIFARs with their shot lists, the CIFAR-10 shot lists of SDCLR's trainIdxList, the digits split; .npy and
    .json manifests) equals the committed one, and it writes every file splits/ holds besides published/."""
    out = tmp_path / "splits"
    run = subprocess.run([sys.executable, str(REPO / "tools" / "make_splits.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    made = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    shipped = sorted(path.relative_to(SHIPPED).as_posix() for path in SHIPPED.rglob("*")
                     if path.is_file() and path.relative_to(SHIPPED).parts[0] != "published")
    assert made == shipped
    per_cifar = 2 * (2 + 5 * 5)  # val + train, and 5 splits of D_i, D_b, S_b, 100shot, 50shot; .npy + .json each
    assert len(made) == 2 * per_cifar + 2 * 10 + 2  # + the CIFAR-10 shot lists (5 x 2) + the digits split
    assert sorted(run.stdout.split()) == sorted(str(out / name) for name in made if name.endswith(".npy"))
    different = [name for name in made if (out / name).read_bytes() != (SHIPPED / name).read_bytes()]
    assert not different


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_generation_depends_on_the_seed(variant, cifar_labels, tmp_path):
    written = write_cifar_lt_splits(variant, cifar_labels[variant], tmp_path, split_ids=(1,), seed=0)
    names = sorted(path.name for path in written)
    assert names == sorted(["val_idx.npy", "train_idx.npy", "split1_D_i.npy", "split1_D_b.npy", "split1_S_b.npy",
                            "split1_100shot.npy", "split1_50shot.npy"])
    other = write_cifar_lt_splits(variant, cifar_labels[variant], tmp_path / "seed1", split_ids=(1,), seed=1)
    assert not np.array_equal(np.load(other[2]), np.load(written[2]))


def test_generation_with_the_published_val_list_reproduces_the_sdclr_pool(reference_splits, cifar_labels, tmp_path):
    labels = cifar_labels["cifar10"]
    val = load_split(reference_splits / "sdclr" / "cifar10" / "valIdxList.npy", N_TRAIN)
    published_pool = load_split(reference_splits / "sdclr" / "cifar10" / "trainIdxList.npy", N_TRAIN)
    write_cifar_lt_splits("cifar10", labels, tmp_path, split_ids=(4,), val_list=val, seed=3)
    check_generated_folder(tmp_path, "cifar10", labels, split_ids=(4,))
    np.testing.assert_array_equal(np.load(tmp_path / "val_idx.npy"), val)
    assert set(np.load(tmp_path / "train_idx.npy").tolist()) == set(published_pool.tolist())
    assert "given" in json.loads((tmp_path / "val_idx.json").read_text())["pool"]


def test_generation_refuses_bad_inputs(cifar_labels, tmp_path):
    with pytest.raises(FastltError, match="cifar5"):
        write_cifar_lt_splits("cifar5", cifar_labels["cifar10"], tmp_path)
    with pytest.raises(FastltError, match="class ids 0..99"):
        write_cifar_lt_splits("cifar100", cifar_labels["cifar10"], tmp_path)
    with pytest.raises(FastltError, match="split ids"):
        write_cifar_lt_splits("cifar10", cifar_labels["cifar10"], tmp_path, split_ids=(0, 1))
    too_big_val = np.arange(0, N_TRAIN, 5)  # 10,000 images: the pool no longer holds 4,500 of each class
    with pytest.raises(FastltError, match="needs 4500"):
        write_cifar_lt_splits("cifar10", cifar_labels["cifar10"], tmp_path, val_list=too_big_val)


def test_make_sdclr_split_prefix_rule_on_a_small_pool():
    labels = np.repeat(np.arange(4), 30)
    pool = np.arange(0, 120, 1)
    split = make_sdclr_split(labels, pool, n_max=20, ratio=4, balanced_per_class=10, few_shot_per_class=3, seed=5)
    assert split.class_counts[split.class_order].tolist() == direct_profile(20, 4, 4)
    for c in range(4):
        d_i, d_b, s_b = (s[labels[s] == c] for s in (split.D_i, split.D_b, split.S_b))
        shorter = min(len(d_i), len(d_b))  # one shuffle per class: every set is a prefix of it
        assert d_i[:shorter].tolist() == d_b[:shorter].tolist() and s_b.tolist() == d_b[:3].tolist()


def test_digits_lt_split(digits_store):
    labels = Store.open(digits_store).part("train").labels
    indices = make_digits_lt_split(labels, ratio=10, seed=1)
    n_max = min(Counter(labels.tolist()).values())
    counts = Counter(labels[indices].tolist())
    assert sorted(counts.values(), reverse=True) == direct_profile(n_max, 10, 10)
    assert grouped_by_class(indices, labels)
    assert not np.array_equal(make_digits_lt_split(labels, ratio=10, seed=2), indices)
    shipped = load_split(SHIPPED / "digits_lt" / "ratio10_seed1.npy", len(labels))
    np.testing.assert_array_equal(shipped, indices)
    manifest = json.loads((SHIPPED / "digits_lt" / "ratio10_seed1.json").read_text())
    assert manifest["ratio"] == 10 and manifest["seed"] == 1 and manifest["n_max"] == n_max
    assert manifest["class_counts"] == [counts[c] for c in range(10)]


def test_load_split_errors_name_the_file(tmp_path):
    cases = {
        "out_of_range.npy": np.array([0, 5, 10]),
        "negative.npy": np.array([0, -1]),
        "duplicate.npy": np.array([1, 2, 1]),
        "two_d.npy": np.arange(6).reshape(2, 3),
        "float.npy": np.array([0.0, 1.0]),
        "empty.npy": np.array([], dtype=np.int64),
    }
    messages = {"out_of_range.npy": "index 10 outside", "negative.npy": "index -1 outside",
                "duplicate.npy": "index 1 appears more than once", "two_d.npy": "1-D", "float.npy": "integer",
                "empty.npy": "no indices"}
    for name, array in cases.items():
        np.save(tmp_path / name, array)
    (tmp_path / "text.npy").write_text("0 1 2\n")
    messages["text.npy"] = "not a readable .npy"
    messages["missing.npy"] = "no such split file"
    for name, expected in messages.items():
        with pytest.raises(FastltError) as caught:
            load_split(tmp_path / name, 10)
        assert str(tmp_path / name) in str(caught.value) and expected in str(caught.value), name
    np.save(tmp_path / "ok.npy", np.array([3, 1, 2], dtype=np.int32))
    loaded = load_split(tmp_path / "ok.npy", 10)
    assert loaded.dtype == np.int64 and loaded.tolist() == [3, 1, 2]


def test_class_counts_matches_a_counter():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 200)
    indices = rng.choice(200, 80, replace=False)
    counter = Counter(labels[indices].tolist())
    assert class_counts(indices, labels, 9).tolist() == [counter[c] for c in range(9)]


def reference_thirds(counts: list[int]) -> dict[str, list[int]]:
    """The SDCLR/BCL cut written out: ascending by count, few = first C//3, medium = next C//3, many = rest."""
    ascending = sorted(range(len(counts)), key=lambda c: (counts[c], c))
    third = len(counts) // 3
    return {"many": sorted(ascending[2 * third:]), "medium": sorted(ascending[third:2 * third]),
            "few": sorted(ascending[:third])}


def test_class_groups_thirds_on_published_split_1(reference_splits, cifar_train_labels):
    all_labels = np.load(cifar_train_labels)
    for variant, split, sizes in (
        ("c10", "sdclr/cifar10_imbSub_with_subsets/split1_D_i.npy", [4, 3, 3]),
        ("c100", "sdclr/cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy", [34, 33, 33]),
    ):
        labels = all_labels[variant].astype(np.int64)
        counts = np.bincount(labels[np.load(reference_splits / split)], minlength=int(labels.max()) + 1)
        groups = class_groups(counts)
        assert [len(groups[g]) for g in ("many", "medium", "few")] == sizes
        assert {g: ids.tolist() for g, ids in groups.items()} == reference_thirds(counts.tolist())
        assert min(counts[groups["many"]]) > max(counts[groups["medium"]])
        assert min(counts[groups["medium"]]) > max(counts[groups["few"]])


def test_class_groups_thirds_give_the_remainder_to_many():
    groups = class_groups(np.array([5, 70, 1, 9, 30, 2, 50, 8]))  # C = 8: few 2, medium 2, many 4
    assert {g: ids.tolist() for g, ids in groups.items()} == {"few": [2, 5], "medium": [0, 7],
                                                              "many": [1, 3, 4, 6]}


def test_class_groups_thresholds(reference_splits):
    counts = json.loads((reference_splits / "derived_class_counts.json").read_text())["imagenet100_LT_train"]
    groups = class_groups(np.array(counts), rule="thresholds")
    assert [len(groups[g]) for g in ("many", "medium", "few")] == [39, 48, 13]  # published ImageNet-100-LT groups
    edges = class_groups(np.array([101, 100, 20, 19, 500]), rule="thresholds")
    assert {g: ids.tolist() for g, ids in edges.items()} == {"many": [0, 4], "medium": [1, 2], "few": [3]}
    with pytest.raises(FastltError, match="'halves'"):
        class_groups(np.array(counts), rule="halves")
