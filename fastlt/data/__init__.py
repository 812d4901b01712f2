"""Data layer: raw sources -> native store -> split -> device-resident loader.

- ``sources``: read the official CIFAR python tarballs (or download them, MD5-checked) and
  build the coloured-digits data set from scikit-learn's digits.
- ``store``: the native on-disk format (uint8 NHWC .npy + labels + meta.json with checksums),
  written atomically and read memory-mapped.
- ``splits``: long-tailed index files (SDCLR CIFAR-LT rules, digits-LT), validation of any
  SDCLR-format file, per-class counts and many/medium/few class groups.
- ``loader``: puts a split on the device once and yields ``Batch(images, labels, indices)``.

Nothing here knows about models or methods; everything above imports from here.
"""
