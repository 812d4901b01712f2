"""LARS as the long-tail references run it: the learning rate and the trust ratio inside the momentum buffer.

Both LoTaR (andrew15818/SimCLR data/lars.py) and FlatCLR (Junya-Chen/FlatCLR optimizer/lars.py)
update every parameter p with gradient g as

    u = g + wd * p;  buf = momentum * buf + lr * trust * u;  p -= buf

so a changing learning rate weighs each gradient by the lr of its own step (SGD and timm's LARS
apply the lr to the whole buffer instead). They differ in the trust ratio (``denominator``):

- "norm-sum" (LoTaR, lars.py:86-91): trust = eta |p| / (|g| + wd |p|), and 1 where |p| or |g| < 1e-15;
- "decayed-grad" (FlatCLR, lars.py:77-96): trust = eta |p| / |g + wd p| (so a parameter at 0, a
  freshly initialised batch-norm shift, keeps trust 0 and does not move, as there), and 1 where
  |g + wd p| = 0, where the reference divides by zero (docs/flatnce.md).

A group with ``adapt = False`` (the batch norm and biases that ``optim.exclude_bn_bias`` sets
apart, with no weight decay) takes trust 1: plain momentum SGD with the lr in the buffer.
The norms of a group are taken in one foreach pass and the trust ratios computed as one vector,
on the device: no host synchronisation per parameter.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor

DENOMINATORS = ("norm-sum", "decayed-grad")
ZERO_NORM = 1e-15  # LoTaR's threshold below which a norm counts as zero (lars.py:91)


class Lars(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with the lr inside the momentum buffer; one trust ratio per tensor."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, eta: float = 1e-3, denominator: str = "norm-sum", adapt: bool = True):
        if denominator not in DENOMINATORS:
            raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "denominator": denominator, "adapt": adapt}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)
        return loss

    def _update(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """One step of the parameters of a group that have gradients."""
        grads = [p.grad for p in params]
        wd = group["weight_decay"]
        steps = torch._foreach_add(grads, params, alpha=wd)  # g + wd p, new tensors: p.grad stays as it was
        if group["adapt"]:
            weight_norms = torch.stack(torch._foreach_norm(params))
            grad_norms = torch.stack(torch._foreach_norm(grads if group["denominator"] == "norm-sum" else steps))
            trust = trust_ratios(weight_norms, grad_norms, group["eta"], wd, group["denominator"])
            torch._foreach_mul_(steps, list((trust * group["lr"]).unbind()))
        else:
            torch._foreach_mul_(steps, group["lr"])
        buffers = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:  # the references start from zeros: momentum * 0 + step = step
                state["momentum_buffer"] = torch.zeros_like(p)
            buffers.append(state["momentum_buffer"])
        torch._foreach_mul_(buffers, group["momentum"])
        torch._foreach_add_(buffers, steps)
        torch._foreach_sub_(params, buffers)


def trust_ratios(weight_norms: Tensor, grad_norms: Tensor, eta: float, weight_decay: float,
                 denominator: str) -> Tensor:
    """Each parameter's trust ratio [P] from its weight norm [P] and gradient norm [P] (of g for norm-sum,
    of g + wd p for decayed-grad)."""
    if denominator == "norm-sum":
        ratio = eta * weight_norms / (grad_norms + weight_decay * weight_norms)
        degenerate = (weight_norms < ZERO_NORM) | (grad_norms < ZERO_NORM)
    else:
        ratio = eta * weight_norms / grad_norms
        degenerate = grad_norms == 0
    return torch.where(degenerate, torch.ones_like(ratio), ratio)
