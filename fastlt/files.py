"""Atomic file writes and checksums: readers never see half a file, a crash never leaves one. Also the
one overwrite rule of every command that writes a path the user named, and file modes that follow the umask."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Callable

from fastlt.errors import FastltError

TEMPORARY_SUFFIX = ".part"  # hidden ``.{name}.xxxx.part`` files: what a killed writer leaves behind
_UMASK_LOCK = threading.Lock()


def check_free(paths: Iterable[Path | None], overwrite: bool) -> None:
    """Refuse, in one line naming it, the first of ``paths`` that exists (None: an output not asked for),
    unless ``overwrite``.

    Every command that writes a file or folder the user named checks it here before any work, so
    nothing a user made is replaced by surprise and a refusal costs nothing and writes nothing.
    """
    if overwrite:
        return
    for path in paths:
        if path is not None and Path(path).exists():
            raise FastltError(f"{path}: exists already; pass --overwrite to replace it")


def read_text(path: Path, missing: str) -> str:
    """The UTF-8 text of ``path``, for the files a user hands over (recipes, store metadata): a file that is
    not there raises ``missing`` as the one-line error, one that cannot be read or decoded says why."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FastltError(missing) from None
    except (OSError, UnicodeDecodeError) as error:
        raise FastltError(f"{path}: unreadable ({error})") from None


def current_umask() -> int:
    """The process's umask. Linux reports it in /proc; elsewhere it is read by setting it, briefly to the
    strictest mask, so a file another thread creates in that instant is never more open than asked."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_temporary(path: Path) -> IO[bytes]:
    """A hidden temporary file beside ``path`` to be renamed over it, with the mode ``open()`` would give
    ``path`` (0666 less the umask): mkstemp makes it 0600, which would keep the file from labmates."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX,
                                         delete=False)
    try:
        os.fchmod(handle.fileno(), 0o666 & ~current_umask())
    except BaseException:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)
        raise
    return handle


def replace_atomically(path: Path, write: Callable[[IO[bytes]], object], keep_old_as: Path | None = None) -> None:
    """Write via ``write(handle)`` to a hidden temporary file beside ``path``, sync, then rename over it.

    With ``keep_old_as`` the file being replaced is first renamed there, but only once the new
    one is complete: a failed write (a full disk) leaves both as they were.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = new_temporary(path)
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
