"""Several processes, one run: torchrun and DistributedDataParallel, plus what a contrastive loss needs.

``torchrun --nproc_per_node N -m fastlt pretrain RECIPE`` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK set; fastlt joins them into one process group (NCCL on CUDA, gloo
on the CPU), puts rank r on cuda:LOCAL_RANK, and then:
- every rank draws the same permutation from the run's seed and takes its share of each
  global batch (``fastlt.data.loader.shard_of``): disjoint samples, together the global batch;
- the embeddings of all ranks are gathered before the loss (``fastlt.methods.gather``, with gradient),
  and each rank computes its own anchors' rows of the global batch's loss against all of them
  (``fastlt.methods.contrast``), backpropagating N times its part. The gather's backward sums
  the ranks' gradients, and DDP's average of the parameter gradients then gives exactly the
  single-process gradient (batch norm aside: each rank normalises its own share unless
  ``train.sync_bn``); the reported loss and per-sample losses are the global batch's on every rank;
- BCL's memory is updated from the gathered indices and per-sample losses, identically on
  every rank;
- only rank 0 writes the run folder, the checkpoints, the logs and the progress line.
"""
from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from fastlt.errors import FastltError
from fastlt.progress import say

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank, number of processes, and its device index on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """The one process that writes files and prints."""
        return self.rank == 0


def launched_ranks() -> Ranks:
    """The ranks torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK) gave this process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as error:
        raise FastltError(f"RANK / WORLD_SIZE / LOCAL_RANK: not integers ({error})") from None
    if world < 1 or not 0 <= rank < world:
        raise FastltError(f"RANK {rank} / WORLD_SIZE {world}: not a valid rank of the run")
    if world > 1 and "LOCAL_RANK" not in os.environ:  # RANK is no device index once there are several nodes
        raise FastltError(f"RANK {rank} of WORLD_SIZE {world} without LOCAL_RANK: this process cannot tell its "
                          "GPU on its node; launch with torchrun, which sets all three")
    return Ranks(rank, world, local)


_control: dist.ProcessGroup | None = None  # the host-side group of ``join``


def restart_hazard() -> str:
    """Why torchrun's restarts may fail to reconnect here, or "". With ``--max-restarts`` and the store its
    agent shares with the workers (the static rendezvous, or c10d's default), a restarted worker can read the
    previous attempt's addresses from that store and fail to connect: 3 of 3 restarts in fastlt's tests with
    torch 2.14 (pytorch/pytorch#135712, #167288). A store of each attempt's own avoids it."""
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0 and \
            os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return ("torchrun --max-restarts with the store its agent shares: a restarted worker can read the last "
                "attempt's addresses and fail to connect; launch with --rdzv-backend c10d and "
                "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/distributed.md)")
    return ""


def join(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (once per process): NCCL for CUDA devices, gloo for the CPU.

    A CUDA process binds its device first and names it to the group, so NCCL's communicator and every
    collective of rank r run on cuda:LOCAL_RANK (without it, every rank's object collectives would use
    cuda:0). A second group on gloo carries the control messages (the run name, RNG states, stop votes) on
    the host, where they never wait on a GPU stream.
    """
    global _control
    if not ranks.active or dist.is_initialized():
        return
    hazard = restart_hazard()
    if hazard and ranks.main:
        say(f"warning: {hazard}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=ranks.rank, world_size=ranks.world, device_id=device)
        _control = dist.new_group(backend="gloo")
    else:
        dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world)
        _control = dist.group.WORLD
    # DDP's reducer (and through it the gloo group's worker threads) lives as long as the parameters it
    # hooks, which reference cycles keep until the collector runs: at interpreter exit that killed 3 of
    # about 100 three-process runs here ("terminate called without an active exception"). Collect them
    # while the interpreter is still whole.
    atexit.register(gc.collect)


def current_ranks() -> Ranks:
    """The ranks of the joined process group; one process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return Ranks()


def share_from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank; the value itself in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def decided_by_main(decide: Callable[[], T]) -> T:
    """``decide()`` run on rank 0 alone and its result given to every rank; a FastltError it raises is raised on
    every rank (a run folder that exists already, say), so no rank waits for an answer that never comes."""
    outcome: tuple[bool, object] = (True, None)
    if current_ranks().main:
        try:
            outcome = (True, decide())
        except FastltError as error:
            outcome = (False, str(error))
    ok, value = share_from_main(outcome)
    if not ok:
        raise FastltError(value)
    return value


def gather_to_all(value: object) -> list[object]:
    """Every rank's ``value`` in rank order, on every rank (over the host-side group); ``[value]`` in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value, group=_control)
    return values


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (a stop signal that reached some of the processes)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor(int(flag))
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_control)
    return bool(value.item())


class StopVote:
    """The ranks' agreement on a stop, polled after every step without a blocking collective.

    Each poll starts an all-reduce of this rank's flag on the host-side group and returns the answer of the
    previous poll's, which has long arrived: every rank calls it at the same steps, so all of them see a
    signal that reached any one at the same step, at most one step after it came.
    """

    def __init__(self) -> None:
        self._pending: tuple[dist.Work, torch.Tensor] | None = None

    def poll(self, requested: bool) -> bool:
        if not (dist.is_available() and dist.is_initialized()):
            return requested
        agreed = self._answer()
        flag = torch.tensor(int(requested))
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_control, async_op=True), flag)
        return agreed

    def settle(self, requested: bool) -> bool:
        """The pending answer or this moment's flags, blocking (an epoch's end); nothing is left in flight."""
        return self._answer() | any_rank(requested)

    def _answer(self) -> bool:
        if self._pending is None:
            return False
        work, flag = self._pending
        self._pending = None
        work.wait()
        return bool(flag.item())


def leave(finished: bool = False) -> None:
    """Leave the process group at the end of a run (nothing in one process). A finished run first waits
    for every rank (rank 0 writes the last checkpoint while the others would already be tearing the
    group down); a failed one leaves at once, as its peers may never arrive."""
    global _control
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier(group=_control)
        dist.destroy_process_group()
        _control = None


def backend_name() -> str:
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else ""
