"""One-line warnings to stderr, each said once per process, so a loop never repeats one."""
from __future__ import annotations

import sys

_said: set[str] = set()


def warn_once(message: str) -> None:
    """Print ``warning: <message>`` to stderr the first time this message comes up."""
    if message in _said:
        return
    _said.add(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)
