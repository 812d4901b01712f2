"""The embeddings of every process of a run before the loss, so each contrasts its anchors with the global batch.

Rank r's loss is N times its own anchors' part P_r of the global batch's loss L = sum_r P_r
(fastlt.methods.contrast). The backward sums the ranks' gradients with respect to the gathered
rows, N dL/dz, and hands each rank its own rows; DistributedDataParallel then averages the
parameter gradients over the N ranks: the result is the gradient one process would compute on
the whole batch (fastlt.train.distributed).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


class _GatherRows(torch.autograd.Function):
    """All ranks' rows in rank order; the backward sums the ranks' gradients and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, rows: Tensor, sizes: tuple[int, ...]) -> Tensor:
        ctx.rank, ctx.sizes = dist.get_rank(), sizes
        return _gather_values(rows, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's anchors met every rank's rows: each row's gradient is the sum
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def gather_rows(rows: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """Every rank's ``rows`` (rank r has ``sizes[r]`` of them) concatenated in rank order, differentiable.

    Shares of unequal length (an epoch's last batch) are padded for the exchange and the
    padding dropped, so no sample is repeated and none reaches the loss twice.
    """
    if not rows.requires_grad:
        return _gather_values(rows, sizes)
    return _GatherRows.apply(rows, tuple(sizes))


def _gather_values(rows: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """``gather_rows`` without gradient (labels, indices, detached losses): every share padded to the
    longest for all_gather, the padding dropped."""
    longest = max(sizes)
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(gathered, sizes)])
