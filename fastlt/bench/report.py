"""How results leave a benchmark: progress lines on stderr, a plain table on stdout, a JSON file.

The JSON file is written atomically (a crash never leaves half a result) and always holds the
machine description, because a rate means nothing without the machine that gave it.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from fastlt.files import write_json_atomic


def say(message: str) -> None:
    """A progress line on stderr, so stdout keeps only the table."""
    print(message, file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> str:
    """A fixed-width text table; ``right`` marks the columns to right-align (numbers)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(header)), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    right = right or [False] * len(headers)

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.rjust(width) if align else value.ljust(width)
                         for value, width, align in zip(values, widths, right)).rstrip()

    return "\n".join([line([str(h) for h in headers]), line(["-" * width for width in widths]),
                      *(line(row) for row in cells)])


def rate(value: float | None) -> str:
    """Images per second with thousands separators; '-' when not measured."""
    return "-" if value is None else f"{value:,.0f}"


def seconds(value: float | None) -> str:
    """A duration in milliseconds below 10 s, in seconds above; '-' when not measured."""
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 10 else f"{value:.1f} s"


def write_result(path: Path | None, result: dict[str, Any]) -> None:
    """Write the result as indented JSON, atomically, when a path is given."""
    if path is not None:
        write_json_atomic(Path(path), result)
        say(f"wrote {path}")
