"""Long-tailed split index files: SDCLR-profile CIFAR-LT splits, digits-LT, loading and class groups.

A split file is a 1-D int64 ``.npy`` of indices into a store part's train set (for CIFAR:
the 50,000 images in python-pickle order), grouped by class id with a random order inside
each class block, and a ``.json`` manifest of the same stem that says how it was made.
This is the format of the published SDCLR/BCL files, so those load unchanged.

CIFAR-LT rules (SDCLR, docs/splits.md): a held-out val list (500/class CIFAR-10,
50/class CIFAR-100) is never sampled; the rest is the pool. Per split, the classes get a
random rank, rank r keeps ``floor(n_max * ratio**(-r/(C-1)))`` images; each class's pool is
shuffled once and D_i (long-tailed), D_b (balanced, same total) and S_b (few-shot) are
prefixes of that one shuffle, so S_b is inside both D_b and D_i.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastlt.data.store import LISTS_FOLDER, META_FILE, STORE_LIST
from fastlt.errors import FastltError
from fastlt.files import check_free, replace_atomically


@dataclass(frozen=True)
class CifarLtSpec:
    """The published CIFAR-LT numbers of one data set (SDCLR's pools and profile, BCL's shot subsets)."""

    num_classes: int
    n_max: int  # D_i count of the largest class
    ratio: float  # largest / smallest class count before flooring
    val_per_class: int  # held-out val list
    eval_train_per_class: int  # linear-eval train list, drawn from the pool
    few_shot_per_class: int  # S_b
    shots: tuple[int, ...] = (100, 50)  # BCL's few-shot linear-probe subsets of the eval train list


CIFAR_LT = {
    "cifar10": CifarLtSpec(num_classes=10, n_max=4500, ratio=100.0, val_per_class=500,
                           eval_train_per_class=4500, few_shot_per_class=45),
    "cifar100": CifarLtSpec(num_classes=100, n_max=450, ratio=100.0, val_per_class=50,
                            eval_train_per_class=400, few_shot_per_class=4),
}

SHARED_LISTS = 0  # split id reserved for the seed of the lists every split shares (val, eval train)
SHOTS_STREAM = 1  # second seed word that separates a split's shot subsets from its D_i/D_b/S_b draw


def lt_profile(n_max: int, num_classes: int, ratio: float) -> np.ndarray:
    """Per-rank class counts ``floor(n_max * (1/ratio)**(r/(C-1)))``, r = 0..C-1 (largest first).

    The exponential profile of LDAM/SDCLR: with n_max 4500, C 10, ratio 100 it gives
    4500 2697 1617 969 581 348 208 125 75 45.
    """
    if n_max < 1 or num_classes < 1 or ratio < 1:
        raise FastltError(
            f"long-tail profile: need n_max >= 1, classes >= 1, ratio >= 1 (got {n_max}, {num_classes}, {ratio})"
        )
    if num_classes == 1:
        return np.array([n_max], dtype=np.int64)
    ranks = np.arange(num_classes)
    return np.floor(n_max * (1.0 / ratio) ** (ranks / (num_classes - 1))).astype(np.int64)


@dataclass(frozen=True)
class LongTailSplit:
    """One SDCLR-style split; all index arrays grouped by class id (class 0 first)."""

    D_i: np.ndarray  # long-tailed pretraining set
    D_b: np.ndarray  # balanced set of (about) the same size
    S_b: np.ndarray  # few-shot balanced set, a subset of D_b and D_i
    class_order: np.ndarray  # class id at each rank (rank 0 = largest)
    class_counts: np.ndarray  # D_i count per class id


def _check_indices(indices: np.ndarray, num_samples: int, what: str) -> np.ndarray:
    """Validate a 1-D integer index array (range, duplicates); returns it as int64."""
    indices = np.asarray(indices)
    if indices.ndim != 1:
        raise FastltError(f"{what}: expected a 1-D index array, found shape {list(indices.shape)}")
    if not np.issubdtype(indices.dtype, np.integer):
        raise FastltError(f"{what}: expected integer indices, found {indices.dtype}")
    if indices.size == 0:
        raise FastltError(f"{what}: no indices")
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= num_samples:
        bad = low if low < 0 else high
        raise FastltError(f"{what}: index {bad} outside [0, {num_samples})")
    unique, counts = np.unique(indices, return_counts=True)
    if len(unique) != len(indices):
        raise FastltError(f"{what}: index {int(unique[counts > 1][0])} appears more than once")
    return indices.astype(np.int64)


def _num_classes(labels: np.ndarray) -> int:
    return int(np.max(labels)) + 1


def _class_blocks(labels: np.ndarray, pool: np.ndarray, per_class: np.ndarray, rng: np.random.Generator,
                  what: str) -> np.ndarray:
    """For each class id in order, ``per_class[c]`` pool members of class c in random order, concatenated."""
    blocks = []
    for label, wanted in enumerate(per_class):
        members = pool[labels[pool] == label]
        if len(members) < wanted:
            raise FastltError(f"{what}: class {label} has {len(members)} samples available, needs {wanted}")
        blocks.append(rng.permutation(members)[:wanted])
    return np.concatenate(blocks).astype(np.int64)


def make_sdclr_split(
    labels: np.ndarray,
    pool: np.ndarray,
    n_max: int,
    ratio: float,
    balanced_per_class: int,
    few_shot_per_class: int,
    seed: int,
) -> LongTailSplit:
    """Draw D_i, D_b and S_b from ``pool`` (indices into ``labels``) by SDCLR's rules.

    The class->rank order is a random permutation; each class's pool is shuffled once and the
    three sets are prefixes of it (D_i the first n_rank, D_b the first balanced_per_class,
    S_b the first few_shot_per_class), so S_b is inside D_b and D_i whenever it is no larger.
    Random draws, in order: the class order, then one shuffle per class id 0..C-1.
    """
    labels = np.asarray(labels)
    pool = _check_indices(pool, len(labels), "long-tail pool")
    num_classes = _num_classes(labels)
    rng = np.random.default_rng(seed)
    class_order = rng.permutation(num_classes).astype(np.int64)
    class_counts = np.empty(num_classes, dtype=np.int64)
    class_counts[class_order] = lt_profile(n_max, num_classes, ratio)
    needed = np.maximum(class_counts, max(balanced_per_class, few_shot_per_class))
    blocks = {"D_i": [], "D_b": [], "S_b": []}
    for label in range(num_classes):
        members = pool[labels[pool] == label]
        if len(members) < needed[label]:
            raise FastltError(f"long-tail pool: class {label} has {len(members)} samples, needs {needed[label]}")
        shuffled = rng.permutation(members)
        blocks["D_i"].append(shuffled[: class_counts[label]])
        blocks["D_b"].append(shuffled[:balanced_per_class])
        blocks["S_b"].append(shuffled[:few_shot_per_class])
    sets = {name: np.concatenate(parts).astype(np.int64) for name, parts in blocks.items()}
    return LongTailSplit(**sets, class_order=class_order, class_counts=class_counts)


def split_checksum(indices: np.ndarray) -> str:
    """sha256 of a split's int64 indices: which samples, in which order, wherever the file lies."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()


def _derived_seed(seed: int, *words: int) -> int:
    """An independent 32-bit seed for one purpose (split k, its shots...), recorded in the manifests."""
    return int(np.random.SeedSequence([seed, *words]).generate_state(1)[0])


def write_cifar_lt_splits(
    variant: str,
    labels: np.ndarray,
    out_dir: Path,
    split_ids: Sequence[int] = (1, 2, 3, 4, 5),
    val_list: np.ndarray | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Generate CIFAR-10-LT / CIFAR-100-LT split files in ``out_dir``; returns the .npy paths written.

    Writes val_idx, train_idx (the linear-eval train list) and, per split k, split{k}_D_i/_D_b/
    _S_b and split{k}_100shot/_50shot (BCL's probe subsets of train_idx), each with a manifest.
    ``val_list`` (e.g. SDCLR's published valIdxList) replaces the generated val list, which
    reproduces SDCLR's pool exactly. Every random draw has a seed derived from ``seed`` and
    the split id, so one split can be regenerated alone. Existing files are refused unless ``overwrite``.
    """
    if variant not in CIFAR_LT:
        raise FastltError(f"data set {variant!r}: long-tail splits exist for {', '.join(CIFAR_LT)}")
    if any(split_id < 1 for split_id in split_ids):
        raise FastltError(f"split ids {list(split_ids)}: must be 1 or more (0 seeds the shared lists)")
    spec = CIFAR_LT[variant]
    labels = np.asarray(labels).astype(np.int64)
    if labels.ndim != 1 or labels.size == 0 or labels.min() < 0 or _num_classes(labels) != spec.num_classes:
        raise FastltError(f"{variant} labels: expected a 1-D array of class ids 0..{spec.num_classes - 1}")
    num_samples = len(labels)
    out_dir = Path(out_dir)
    shared_seed = _derived_seed(seed, SHARED_LISTS)
    shared_rng = np.random.default_rng(shared_seed)
    everything = np.arange(num_samples)
    if val_list is None:
        val = _class_blocks(labels, everything, np.full(spec.num_classes, spec.val_per_class), shared_rng,
                            f"{variant} val list")
        val_origin = f"generated: {spec.val_per_class}/class, seed {shared_seed}"
    else:
        val = _check_indices(val_list, num_samples, "val list")
        val_origin = f"given (sha256 of int64 indices {split_checksum(val)})"
    pool = np.setdiff1d(everything, val)
    pool_text = f"all {num_samples} train images minus the {len(val)} of val_idx ({len(pool)})"
    eval_train = _class_blocks(labels, pool, np.full(spec.num_classes, spec.eval_train_per_class), shared_rng,
                               f"{variant} linear-eval train list")
    base = {"dataset": f"{variant}_lt", "seed": seed, "num_samples": num_samples}

    pending: list[tuple[Path, np.ndarray, dict]] = []  # written only once every draw has succeeded

    def save(name: str, indices: np.ndarray, manifest: dict) -> Path:
        path = out_dir / f"{name}.npy"
        counts = class_counts(indices, labels, spec.num_classes)
        pending.append((path, indices, {**base, **manifest, "class_counts": counts.tolist(),
                                        "total": int(len(indices))}))
        return path

    written = [
        save("val_idx", val, {"kind": "val", "split": None, "derived_seed": shared_seed,
                              "pool": f"all {num_samples} train images; {val_origin}"}),
        save("train_idx", eval_train, {"kind": "linear_eval_train", "split": None, "derived_seed": shared_seed,
                                       "pool": f"{pool_text}; {spec.eval_train_per_class}/class"}),
    ]
    balanced = int(lt_profile(spec.n_max, spec.num_classes, spec.ratio).sum()) // spec.num_classes
    for split_id in split_ids:
        split_seed = _derived_seed(seed, split_id)
        split = make_sdclr_split(labels, pool, spec.n_max, spec.ratio, balanced, spec.few_shot_per_class, split_seed)
        profile = {"split": split_id, "derived_seed": split_seed, "ratio": spec.ratio, "n_max": spec.n_max,
                   "class_order": split.class_order.tolist(), "pool": pool_text}
        written += [
            save(f"split{split_id}_D_i", split.D_i, {"kind": "D_i", **profile}),
            save(f"split{split_id}_D_b", split.D_b, {"kind": "D_b", **profile, "per_class": balanced}),
            save(f"split{split_id}_S_b", split.S_b, {"kind": "S_b", **profile, "per_class": spec.few_shot_per_class}),
        ]
        for shots, subset, shots_seed in draw_shot_subsets(variant, labels, eval_train, seed, split_id):
            written.append(save(f"split{split_id}_{shots}shot", subset, {
                "kind": f"{shots}shot", "split": split_id, "derived_seed": shots_seed, "per_class": shots,
                "pool": "train_idx (the linear-eval train list)"}))
    save_splits(pending, overwrite)
    return written


def draw_shot_subsets(variant: str, labels: np.ndarray, eval_train: np.ndarray, seed: int,
                      subset_id: int) -> list[tuple[int, np.ndarray, int]]:
    """(shots, indices, derived seed) of BCL's class-balanced probe subsets of ``eval_train``, one set per id."""
    spec = CIFAR_LT[variant]
    shots_seed = _derived_seed(seed, subset_id, SHOTS_STREAM)
    rng = np.random.default_rng(shots_seed)
    return [(shots, _class_blocks(labels, eval_train, np.full(spec.num_classes, shots), rng,
                                  f"{variant} {shots}-shot subset"), shots_seed) for shots in spec.shots]


def write_shot_subsets(variant: str, labels: np.ndarray, eval_train: np.ndarray, source: str, out_dir: Path,
                       subset_ids: Sequence[int] = (1, 2, 3, 4, 5), seed: int = 0,
                       overwrite: bool = False) -> list[Path]:
    """fastlt's own 100-/50-shot subsets of a given linear-eval list (e.g. SDCLR's CIFAR-10 trainIdxList,
    for which no published few-shot lists exist): ``subset{k}_{shots}shot.npy`` with manifests."""
    labels = np.asarray(labels).astype(np.int64)
    eval_train = _check_indices(eval_train, len(labels), source)
    drawn = [(k, *subset) for k in subset_ids for subset in draw_shot_subsets(variant, labels, eval_train, seed, k)]
    pending = []
    for subset_id, shots, indices, shots_seed in drawn:
        counts = class_counts(indices, labels, CIFAR_LT[variant].num_classes)
        pending.append((Path(out_dir) / f"subset{subset_id}_{shots}shot.npy", indices, {
            "dataset": f"{variant}_lt", "kind": f"{shots}shot", "subset": subset_id, "seed": seed,
            "derived_seed": shots_seed, "per_class": shots, "num_samples": len(labels),
            "pool": f"{source} (sha256 of int64 indices {split_checksum(eval_train)}); drawn by fastlt, not published",
            "class_counts": counts.tolist(), "total": int(len(indices))}))
    save_splits(pending, overwrite)
    return [path for path, _, _ in pending]


def _digits_lt_split(labels: np.ndarray, ratio: float, seed: int) -> LongTailSplit:
    """The digits-LT draw: SDCLR's rules on the whole train part, n_max = the smallest class. A ratio so
    steep that the smallest ranks floor to 0 is refused: a class without a sample has no place in the
    many / medium / few groups and is never learnt."""
    labels = np.asarray(labels)
    n_max = int(np.bincount(labels).min())
    split = make_sdclr_split(labels, np.arange(len(labels)), n_max, ratio, 0, 0, seed)
    empty = empty_classes(split.class_counts)
    if empty:
        raise FastltError(f"--ratio {ratio:g}: the split leaves {name_classes(empty)} without a sample; lower the "
                          f"ratio (the largest class keeps {n_max} images)")
    return split


def make_digits_lt_split(labels: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Long-tailed indices into the digits train part with any imbalance ratio.

    Counts ``floor(n_max * (1/ratio)**(r/(C-1)))`` with n_max the smallest per-class count,
    so every class can fill its rank; class order random from ``seed``.
    """
    return _digits_lt_split(labels, ratio, seed).D_i


def write_digits_lt_split(labels: np.ndarray, ratio: float, seed: int, path: Path, overwrite: bool = False) -> Path:
    """make_digits_lt_split saved with a full manifest (class order, counts) at ``path``; an existing
    file (the .npy or its .json) is refused unless ``overwrite``."""
    split = _digits_lt_split(labels, ratio, seed)
    save_splits([(Path(path), split.D_i, {
        "dataset": "digits_lt", "kind": "D_i", "split": None, "seed": seed, "ratio": ratio,
        "n_max": int(split.class_counts.max()), "class_order": split.class_order.tolist(),
        "class_counts": split.class_counts.tolist(), "total": int(len(split.D_i)), "num_samples": int(len(labels)),
        "pool": f"the whole digits train part ({len(labels)})",
    })], overwrite)
    return Path(path)


def save_splits(pending: Sequence[tuple[Path, np.ndarray, dict]], overwrite: bool) -> None:
    """save_split each (path, indices, manifest), once none of the files they make (each .npy and its .json)
    is refused by the overwrite rule: a refusal leaves every file as it was."""
    check_free([file for path, _, _ in pending for file in (path, path.with_suffix(".json"))], overwrite)
    for path, indices, manifest in pending:
        save_split(path, indices, manifest)


def save_split(path: Path, indices: np.ndarray, manifest: dict) -> None:
    """Save indices as int64 .npy and ``manifest`` as .json of the same stem, each replaced atomically."""
    path = Path(path)
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        found = f"{indices.dtype} {list(indices.shape)}"
        raise FastltError(f"{path}: split indices must be a 1-D integer array, found {found}")
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda handle: np.save(handle, indices.astype(np.int64), allow_pickle=False))
    lines = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in manifest.items()]  # one key a line
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    replace_atomically(path.with_suffix(".json"), lambda handle: handle.write(text.encode("utf-8")))


def split_name(split: str) -> str:
    """How reports name a split value: the file's stem, a store list's name ("store:lt" -> "lt"), or
    "all-train" for the whole part."""
    return Path(split.removeprefix(STORE_LIST)).stem if split else "all-train"


def split_or_all(split: str | Path, num_samples: int) -> np.ndarray:
    """The indices of a split file, or every sample of the part when ``split`` is empty (recipes' "")."""
    return load_split(Path(split), num_samples) if split else np.arange(num_samples, dtype=np.int64)


def load_split(path: Path, num_samples: int) -> np.ndarray:
    """Load and validate a split file (fastlt's or SDCLR's) for a part of ``num_samples`` images.

    Checks: the file exists and is a .npy, 1-D, integer, every index in [0, num_samples),
    no index twice. Returns int64 indices in file order.
    """
    path = Path(path)
    if not path.is_file():
        kept = ""
        if path.parent.name == LISTS_FOLDER and (path.parent.parent / META_FILE).is_file():
            names = sorted(file.stem for file in path.parent.glob("*.npy"))
            kept = f" (the store keeps the lists {', '.join(names)})" if names else " (the store keeps no lists)"
        raise FastltError(f"{path}: no such split file{kept}")
    try:
        indices = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise FastltError(f"{path}: not a readable .npy index file ({' '.join(str(exc).split())})") from None
    if not isinstance(indices, np.ndarray):
        raise FastltError(f"{path}: not a single .npy array")
    return _check_indices(indices, num_samples, str(path))


def class_counts(indices: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """How many of ``indices`` fall in each class id (int64 [num_classes])."""
    return np.bincount(np.asarray(labels)[np.asarray(indices)], minlength=num_classes).astype(np.int64)


def empty_classes(counts: np.ndarray) -> list[int]:
    """The class ids whose entry in per-class ``counts`` is 0."""
    return [int(label) for label in np.flatnonzero(np.asarray(counts) == 0)]


def name_classes(ids: Sequence[int], shown: int = 10) -> str:
    """"class 7" or "classes 7, 8, 9" (the first ``shown``, then how many more), for one-line errors."""
    listed = ", ".join(map(str, ids[:shown])) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
    return f"class{'es' * (len(ids) > 1)} {listed}"


def check_every_class(indices: np.ndarray, labels: np.ndarray, class_names: list[str], what: str) -> None:
    """Refuse a split without a sample of some class: the many / medium / few groups, the probes and the
    balanced SVM subsample are all per class, and a class never seen cannot be learnt."""
    empty = empty_classes(class_counts(indices, labels, len(class_names)))
    if empty:
        first = empty[0]
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise FastltError(f"{what}: no sample of class {first} ({class_names[first]!r}){more}; "
                          "every class needs at least one")


GROUP_NAMES = ("many", "medium", "few")  # the class groups of class_groups, in report order
MANY_ABOVE = 100  # ImageNet-100-LT thresholds: many > 100, medium 20..100, few < 20 training images
FEW_BELOW = 20


def class_groups(counts: np.ndarray, rule: str = "thirds") -> dict[str, np.ndarray]:
    """Split class ids into many / medium / few shot groups by their training counts, for reports.

    "thirds" (CIFAR; the SDCLR and BCL code): classes sorted by count ascending with numpy's
    default argsort, few = the first C//3, medium = the next C//3, many = the rest, so many takes
    the remainder (C100 34/33/33, C10 4/3/3 many/medium/few). "thresholds" (ImageNet-100-LT):
    many > 100, medium 20..100, few < 20.
    """
    counts = np.asarray(counts)
    if rule == "thirds":
        ascending = np.argsort(counts)  # the reference's call; its tie order is numpy's
        third = len(counts) // 3
        chosen = {"many": ascending[2 * third:], "medium": ascending[third: 2 * third], "few": ascending[:third]}
    elif rule == "thresholds":
        ids = np.arange(len(counts))
        chosen = {"many": ids[counts > MANY_ABOVE], "medium": ids[(counts >= FEW_BELOW) & (counts <= MANY_ABOVE)],
                  "few": ids[counts < FEW_BELOW]}
    else:
        raise FastltError(f"class groups rule {rule!r}: expected 'thirds' or 'thresholds'")
    return {name: np.sort(ids).astype(np.int64) for name, ids in chosen.items()}


def held_out_indices(val_split: str, pretrain_indices: np.ndarray, num_samples: int) -> np.ndarray:
    """Sorted indices of the ``val_split`` file, or of the part's samples outside the pretraining split.

    The held-out list picks the SDCLR probe's best epoch and feeds the online monitor, so it
    must never overlap the images pretraining saw.
    """
    if val_split:
        indices = np.sort(load_split(Path(val_split), num_samples))
        if np.intersect1d(indices, pretrain_indices).size:
            raise FastltError(f"{val_split}: eval.val_split overlaps the pretraining split (data.split)")
        return indices
    indices = np.setdiff1d(np.arange(num_samples), pretrain_indices)
    if indices.size == 0:
        raise FastltError("eval.val_split: empty, and the pretraining split uses every sample, so nothing is held out")
    return indices
