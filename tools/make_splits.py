"""Regenerate the split files shipped in splits/ (deterministic; the same code as `fastlt splits`).

    python tools/make_splits.py [--labels tests/fixtures/cifar_train_labels.npz] [--out splits]

The CIFAR labels file holds the 50,000 train labels of CIFAR-10 (``c10``) and CIFAR-100
(``c100``) in python-pickle order, the same labels a converted store's train part has.
The digits split is built from the seed-0 coloured-digits train labels.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastlt.data.sources import make_coloured_digits
from fastlt.data.splits import write_cifar_lt_splits, write_digits_lt_split, write_shot_subsets

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_labels = REPO / "tests" / "fixtures" / "cifar_train_labels.npz"
    parser.add_argument("--labels", type=Path, default=default_labels)
    parser.add_argument("--out", type=Path, default=REPO / "splits")
    args = parser.parse_args()
    labels = np.load(args.labels)
    for variant, key in (("cifar10", "c10"), ("cifar100", "c100")):
        for path in write_cifar_lt_splits(variant, labels[key], args.out / f"{variant}_lt", (1, 2, 3, 4, 5), seed=0):
            print(path)
    # CIFAR-10 has no published 100-/50-shot lists: fastlt draws its own from SDCLR's trainIdxList.
    published = args.out / "published" / "sdclr" / "cifar10" / "trainIdxList.npy"
    for path in write_shot_subsets("cifar10", labels["c10"], np.load(published), "SDCLR's cifar10/trainIdxList.npy",
                                   args.out / "cifar10_lt" / "shots_of_published_trainIdxList"):
        print(path)
    parts, _ = make_coloured_digits(0)
    print(write_digits_lt_split(parts["train"].labels, 10.0, 1, args.out / "digits_lt" / "ratio10_seed1.npy"))


if __name__ == "__main__":
    main()
