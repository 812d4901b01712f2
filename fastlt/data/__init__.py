"""Data layer: raw sources -> native store -> split -> device-resident loader.

- ``sources``: read the official CIFAR python tarballs (or download them, MD5-checked) and
  build the coloured-digits data set from scikit-learn's digits.
- ``store``: the native on-disk format (uint8 NHWC .npy + labels + meta.json with checksums),
  written atomically and read memory-mapped.
- ``splits``: long-tailed index files (SDCLR CIFAR-LT rules, digits-LT), validation of any
  SDCLR-format file, per-class counts and many/medium/few class groups.
- ``loader``: puts a split on the device once and yields ``Batch(images, labels, indices)``.
- ``backends``: FFCV and DALI files behind the same part and loader interfaces. Importing it
  registers their codecs with the store (which does not import them), so it is imported here.

Nothing here knows about models or methods; everything above imports from here.
"""
from fastlt.data import backends  # noqa: F401 - registers the FFCV and DALI codecs with the store
