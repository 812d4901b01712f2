"""torchrun on the CPU for the tests: gloo processes with one thread each, on a free port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_command(*args: str, processes: int = 2, max_restarts: int = 0) -> list[str]:
    """``torchrun --nproc_per_node N --max-restarts R ARGS...`` as an argument list. A run that may restart
    takes the c10d rendezvous: the static one serves every attempt from one store, where the second attempt's
    gloo found the first's addresses (torch 2.14) and could not connect."""
    port = str(free_port())
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"] if max_restarts else \
        ["--master_port", port]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--max-restarts",
            str(max_restarts), *rendezvous, *args]


def one_thread() -> dict[str, str]:
    """The environment for the processes: two of them share the two cores of a test machine."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, timeout: int = 600, env: dict[str, str] | None = None, **launch: int
             ) -> subprocess.CompletedProcess:
    """Run torchrun to the end; stdout and stderr captured as text."""
    return subprocess.run(torchrun_command(*args, **launch), capture_output=True, text=True, timeout=timeout,
                          env={**one_thread(), **(env or {})})
