"""Atomic file writes and checksums: readers never see half a file, a crash never leaves one."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def replace_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via ``write(handle)`` to a hidden temporary file beside ``path``, sync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    finally:
        Path(handle.name).unlink(missing_ok=True)


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
