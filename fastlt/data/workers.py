"""An ordered map over worker processes, for the CPU-bound image work of `fastlt convert`."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
from typing import Any, Callable, Iterable, Iterator

OrderedMap = Callable[[Callable[[Any], Any], Iterable[Any], int], Iterator[Any]]


@contextlib.contextmanager
def ordered_map(workers: int) -> Iterator[OrderedMap]:
    """``map(function, items, chunksize)`` in input order over ``workers`` processes (forked where the OS
    allows); with one worker, in this process. The pool is terminated on leaving, also on an error."""
    if workers <= 1:
        yield lambda function, items, chunksize=1: map(function, items)
        return
    with multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(workers) as pool:
        yield lambda function, items, chunksize=1: pool.imap(function, items, chunksize=chunksize)
