"""Regenerate the split files shipped in splits/ (deterministic; the same code as `fastlt splits`).

    python tools/make_splits.py [--labels tests/fixtures/cifar_train_labels.npz] [--out splits]
                                [--published splits/published]

The CIFAR labels file holds the 50,000 train labels of CIFAR-10 (``c10``) and CIFAR-100
(``c100``) in python-pickle order, the same labels a converted store's train part has.
The digits split is built from the seed-0 coloured-digits train labels. ``--published`` is read
only (SDCLR's CIFAR-10 trainIdxList, from which the CIFAR-10 shot lists are drawn), so ``--out``
may be any folder: tests/data/test_splits.py regenerates everything into a temporary one and
compares it with splits/ byte for byte.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastlt.data.sources import make_coloured_digits
from fastlt.data.splits import write_cifar_lt_splits, write_digits_lt_split, write_shot_subsets

REPO = Path(__file__).resolve().parents[1]


def write_all(labels_file: Path, published: Path, out: Path) -> list[Path]:
    """Every generated split file (the .npy paths; each has a .json manifest beside it) under ``out``, replacing
    those there: regenerating the shipped tree in place is what this tool is for."""
    labels = np.load(labels_file)
    written = []
    for variant, key in (("cifar10", "c10"), ("cifar100", "c100")):
        written += write_cifar_lt_splits(variant, labels[key], out / f"{variant}_lt", (1, 2, 3, 4, 5), seed=0,
                                         overwrite=True)
    # CIFAR-10 has no published 100-/50-shot lists: fastlt draws its own from SDCLR's trainIdxList.
    train_list = np.load(published / "sdclr" / "cifar10" / "trainIdxList.npy")
    written += write_shot_subsets("cifar10", labels["c10"], train_list, "SDCLR's cifar10/trainIdxList.npy",
                                  out / "cifar10_lt" / "shots_of_published_trainIdxList", overwrite=True)
    parts, _ = make_coloured_digits(0)
    written.append(write_digits_lt_split(parts["train"].labels, 10.0, 1, out / "digits_lt" / "ratio10_seed1.npy",
                                         overwrite=True))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=REPO / "tests" / "fixtures" / "cifar_train_labels.npz")
    parser.add_argument("--out", type=Path, default=REPO / "splits")
    parser.add_argument("--published", type=Path, default=REPO / "splits" / "published")
    args = parser.parse_args()
    for path in write_all(args.labels, args.published, args.out):
        print(path)


if __name__ == "__main__":
    main()
