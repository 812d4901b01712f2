"""An image set larger than the memory the converting process may allocate still converts (docs/data.md, "Stores"):
`fastlt convert folder` decodes rows straight into a memory-mapped part, so its own memory does not grow with
the data.

The limit is RLIMIT_DATA, set in the child: it caps the private memory a process maps (heap, anonymous maps)
but not a shared file mapping, which is what a memory-mapped part is (RLIMIT_AS would count the map itself,
and a store larger than address space is not the claim). The child's own need is measured first (a run
without a limit reports what it allocated), the limit is that plus HEADROOM, and the images decode to more
than twice HEADROOM. The same limit with a writer that keeps the part in memory fails, so the limit bites.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastlt.data.store import Store

SIZE = 256  # stored side: 196,608 decoded bytes an image
PER_CLASS = 400  # two classes: 800 images, 157 MB decoded
HEADROOM = 64 * 2**20

# `fastlt ...` in a child that, with "measure", prints at exit the private memory it has mapped (VmData), and
# with "in-memory", keeps every staged part in an anonymous array instead of a memory-mapped file.
CHILD = '''
import atexit, sys

mode = sys.argv[1]
if mode == "measure":
    def report():
        status = open("/proc/self/status").read().split("VmData:")[1].split()
        print("VmData", int(status[0]) * 1024, file=sys.stderr)
    atexit.register(report)
if mode == "in-memory":
    import numpy as np
    from fastlt.data.store import StoreWriter

    def new_part(self, part_name, count, height, width):
        arrays = np.zeros((count, height, width, 3), np.uint8), np.zeros(count, np.int64)
        self._parts[part_name] = arrays
        return arrays

    StoreWriter.new_part = new_part
sys.argv = ["fastlt", *sys.argv[2:]]
from fastlt.cli import main

main()
'''


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Two class folders of small JPEGs (hard links of one file per class: cheap to make, decoded each time)."""
    root = tmp_path_factory.mktemp("large_folder") / "images"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        folder = root / name
        folder.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / "0.jpg", quality=90)
        for i in range(1, PER_CLASS):
            os.link(folder / "0.jpg", folder / f"{i}.jpg")
    return root


def convert(mode: str, root: Path, out: Path, limit: int | None = None) -> subprocess.CompletedProcess:
    def lower_the_limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    return subprocess.run([sys.executable, "-c", CHILD, mode, "convert", "folder", "--root", str(root), "--size",
                           str(SIZE), "--workers", "2", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, preexec_fn=lower_the_limit if limit else None)


def test_a_folder_larger_than_the_memory_limit_converts(image_folder, tmp_path):
    decoded = 2 * PER_CLASS * SIZE * SIZE * 3
    assert decoded > 2 * HEADROOM
    measured = convert("measure", image_folder, tmp_path / "measured")
    assert measured.returncode == 0, measured.stderr
    need = int(measured.stderr.split("VmData")[-1].split()[0])
    limit = need + HEADROOM
    limited = convert("measure", image_folder, tmp_path / "limited", limit)
    assert limited.returncode == 0, (limit, limited.stderr)
    store = Store.open(tmp_path / "limited")
    expected = Store.open(tmp_path / "measured").part("train")
    part = store.part("train", verify=True)
    assert len(part.labels) == 2 * PER_CLASS and np.array_equal(part.labels, expected.labels)
    assert np.array_equal(part.images[::97], expected.images[::97])
    held = convert("in-memory", image_folder, tmp_path / "held", limit)
    assert held.returncode != 0 and "MemoryError" in held.stderr, held.stderr  # the limit bites a non-streaming writer
    assert not (tmp_path / "held").exists()
