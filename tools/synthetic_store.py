"""Write a native store of random pixels with CIFAR's true train labels, for throughput runs without the data set.

    python tools/synthetic_store.py --variant cifar100 --out /tmp/cifar100-synthetic

The labels come from tests/fixtures/cifar_train_labels.npz (the 50,000 true labels in pickle
order), so the published splits select the same class counts as on real CIFAR and an epoch has
the real number of steps. Pixels are uniform noise: speed is measured, accuracy is meaningless.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastlt.data.store import StorePart, write_native_store

LABELS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "cifar_train_labels.npz"
TEST_SIZE = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("cifar10", "cifar100"), default="cifar100")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    train_labels = np.load(LABELS)["c10" if args.variant == "cifar10" else "c100"].astype(np.int64)
    num_classes = int(train_labels.max()) + 1
    rng = np.random.default_rng(0)
    parts = {
        "train": StorePart(rng.integers(0, 256, (len(train_labels), 32, 32, 3), dtype=np.uint8), train_labels),
        "test": StorePart(rng.integers(0, 256, (TEST_SIZE, 32, 32, 3), dtype=np.uint8),
                          np.arange(TEST_SIZE, dtype=np.int64) % num_classes),
    }
    names = [f"class-{c}" for c in range(num_classes)]
    print(write_native_store(args.out, args.variant, names, parts, {"dataset": "synthetic noise", "seed": 0},
                             overwrite=True))


if __name__ == "__main__":
    main()
