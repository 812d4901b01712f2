"""Several processes, one run: torchrun and DistributedDataParallel, plus what a contrastive loss needs.

``torchrun --nproc_per_node N -m fastlt pretrain RECIPE`` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK set; fastlt joins them into one process group (NCCL on CUDA, gloo
on the CPU), puts rank r on cuda:LOCAL_RANK, and then:
- every rank draws the same permutation from the run's seed and takes its share of each
  global batch (``fastlt.data.loader.shard_of``): disjoint samples, together the global batch;
- the embeddings of all ranks are gathered before the loss (``fastlt.methods.gather``, with gradient),
  so every rank computes the loss of the global batch, as one process would. Its backward
  sums each rank's gradient over the ranks, and DDP's average of the parameter gradients
  then gives exactly the single-process gradient (batch norm aside: each rank normalises its
  own share unless ``train.sync_bn``);
- BCL's memory is updated from the gathered indices and per-sample losses, identically on
  every rank;
- only rank 0 writes the run folder, the checkpoints, the logs and the progress line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastlt.errors import FastltError


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
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise FastltError(f"RANK / WORLD_SIZE / LOCAL_RANK: not integers ({error})") from None
    if world < 1 or not 0 <= rank < world:
        raise FastltError(f"RANK {rank} / WORLD_SIZE {world}: not a valid rank of the run")
    return Ranks(rank, world, local)


def join(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (once per process): NCCL for CUDA devices, gloo for the CPU."""
    if ranks.active and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank,
                                world_size=ranks.world)


def current_ranks() -> Ranks:
    """The ranks of the joined process group; one process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return Ranks()


def share_from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank (a run folder's timestamped name); the value itself in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on one (a stop signal that reached some of the processes)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor(int(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def leave(finished: bool = False) -> None:
    """Leave the process group at the end of a run (nothing in one process). A finished run first waits
    for every rank (rank 0 writes the last checkpoint while the others would already be tearing the
    group down); a failed one leaves at once, as its peers may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def backend_name() -> str:
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else ""
