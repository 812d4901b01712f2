"""Atomic file writes and checksums: readers never see half a file, a crash never leaves one."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


TEMPORARY_SUFFIX = ".part"  # hidden ``.{name}.xxxx.part`` files: what a killed writer leaves behind


def replace_atomically(path: Path, write: Callable[[IO[bytes]], object], keep_old_as: Path | None = None) -> None:
    """Write via ``write(handle)`` to a hidden temporary file beside ``path``, sync, then rename over it.

    With ``keep_old_as`` the file being replaced is first renamed there, but only once the new
    one is complete: a failed write (a full disk) leaves both as they were.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX,
                                         delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_old_as is not None and path.exists():
            os.replace(path, keep_old_as)
        os.replace(handle.name, path)
        if keep_old_as is not None:
            _fsync_folder(path.parent)
    finally:
        Path(handle.name).unlink(missing_ok=True)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files killed writers left in ``folder``; returns them."""
    stray = sorted(Path(folder).glob(f".*{TEMPORARY_SUFFIX}"))
    for path in stray:
        path.unlink(missing_ok=True)
    return stray


def _fsync_folder(folder: Path) -> None:
    """Make renames inside ``folder`` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with UTF-8 text, atomically."""
    replace_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with indented JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 4 MiB chunks so large stores need no extra memory."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
