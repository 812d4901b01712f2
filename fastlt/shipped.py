"""Where the recipes and split files that ship with fastlt live: in the installed package, or in a checkout."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_folder(kind: str) -> Path:
    """The shipped ``pipelines`` or ``splits`` folder.

    An installed wheel carries them as ``fastlt/pipelines`` and ``fastlt/splits`` (setup.py maps
    the top-level folders there); a source checkout or editable install has them beside ``fastlt/``.
    """
    if kind not in ("pipelines", "splits"):
        raise ValueError(f"no shipped folder {kind!r}")
    installed = _PACKAGE / kind
    return installed if installed.is_dir() else _PACKAGE.parent / kind
