"""fastlt's LARS against plain per-parameter transcriptions of LoTaR's and FlatCLR's LARS, over several steps.

Transcribed rules (what the reference code computes, written out here):
- LoTaR, andrew15818/SimCLR data/lars.py:78-102: trust = eta |w| / (|g| + wd |w|), 1 where |w| or
  |g| < 1e-15; buf = m buf + lr trust (g + wd w); w -= buf.
- FlatCLR, Junya-Chen/FlatCLR optimizer/lars.py:77-112: g' = g + wd w; trust = eta |w| / |g'| (its
  torch.where conditions ``norm >= 0`` always hold); buf = m buf + lr trust g'; w -= buf; every
  parameter, batch norm and biases included (the exclusion lists are never consulted).
"""
import pytest
import torch
from torch import nn

from fastlt.recipe import OptimConfig
from fastlt.train.lars import Lars
from fastlt.train.run_state import build_optimizer

LRS = [0.0, 0.05, 0.3, 0.5, 0.2]  # a warm-up from 0 and a decay: the lr changes every step


def lotar_step(weights, grads, buffers, lr, momentum, weight_decay, eta):
    for name, w in weights.items():
        g = grads[name]
        if g is None:
            continue
        w_norm, g_norm = torch.norm(w), torch.norm(g)
        local = eta * w_norm / (g_norm + weight_decay * w_norm)
        if w_norm < 1e-15 or g_norm < 1e-15:
            local = torch.tensor(1.0)
        buffers[name] = momentum * buffers.get(name, torch.zeros_like(w)) + local * lr * (g + weight_decay * w)
        weights[name] = w - buffers[name]


def flatclr_step(weights, grads, buffers, lr, momentum, weight_decay, eta):
    for name, w in weights.items():
        g = grads[name]
        if g is None:
            continue
        g = g + weight_decay * w
        trust = (eta * torch.norm(w) / torch.norm(g)).item()
        buffers[name] = momentum * buffers.get(name, torch.zeros_like(w)) + lr * trust * g
        weights[name] = w - buffers[name]


def model_with_edge_cases():
    """Linear + batch norm, a weight at exactly 0 (as a fresh BN shift) and a parameter that gets no gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    model.unused = nn.Parameter(torch.randn(3))
    return model


def random_grads(model, step, zero=()):
    generator = torch.Generator().manual_seed(100 + step)
    grads = {}
    for name, p in model.named_parameters():
        grads[name] = None if name == "unused" else torch.randn(p.shape, generator=generator)
        if name in zero:
            grads[name] = torch.zeros_like(p)
    return grads


def run_both(model, optimizer, transcription, zero=(), **rule):
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers = {}
    for step, lr in enumerate(LRS):
        grads = random_grads(model, step, zero)
        for name, p in model.named_parameters():
            p.grad = grads[name]
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        transcription(weights, grads, buffers, lr, **rule)
    return weights


def test_norm_sum_is_lotars_lars_step_for_step():
    model = model_with_edge_cases()
    optimizer = Lars(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4, eta=1e-3)
    # "2.bias" has zero gradients: LoTaR's trust ratio is 1 there; "1.bias" starts at 0 (|w| < 1e-15: trust 1)
    expected = run_both(model, optimizer, lotar_step, zero=("2.bias",), momentum=0.9, weight_decay=5e-4, eta=1e-3)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-6, atol=1e-9, msg=name)
    assert torch.equal(model.unused.detach(), expected["unused"])  # no gradient: untouched, no state
    assert model.unused not in optimizer.state


def test_decayed_grad_is_flatclrs_lars_step_for_step():
    model = model_with_edge_cases()
    optimizer = Lars(model.parameters(), lr=0.6, momentum=0.9, weight_decay=1e-6, eta=1e-3, denominator="decayed-grad")
    # "2.bias" has zero gradients (g + wd w is then wd w: trust eta / wd); "1.bias" starts at 0: trust 0, never moves
    expected = run_both(model, optimizer, flatclr_step, zero=("2.bias",), momentum=0.9, weight_decay=1e-6, eta=1e-3)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-6, atol=1e-9, msg=name)
    assert torch.equal(model[1].bias.detach(), torch.zeros(4))


def test_decayed_grad_takes_trust_1_where_the_reference_divides_by_zero():
    weight = nn.Parameter(torch.zeros(3))
    optimizer = Lars([weight], lr=0.5, weight_decay=1e-6, denominator="decayed-grad")
    weight.grad = torch.zeros(3)
    optimizer.step()  # FlatCLR: 0 / 0 = NaN, and the weight becomes NaN
    assert torch.equal(weight.detach(), torch.zeros(3))


def test_the_lr_is_inside_the_momentum_buffer():
    """With one parameter and a constant gradient, lr 0 then lr 1: the first step's lr-0 gradient adds nothing."""
    weight = nn.Parameter(torch.ones(2))
    optimizer = Lars([weight], lr=0.0, momentum=0.9, weight_decay=0.0, eta=1.0)
    for lr in (0.0, 1.0):
        weight.grad = torch.full((2,), 2.0)
        optimizer.param_groups[0]["lr"] = lr
        optimizer.step()
    # trust |w| / |g| = 1/2; buf = 0.9 * 0 + 1 * 1/2 * g = 1, so w = 0 (lr outside the buffer, as SGD: w = -0.9)
    assert torch.allclose(weight.detach(), torch.zeros(2))


@pytest.mark.parametrize("exclude", [False, True])
def test_build_optimizer_applies_decay_and_trust_to_every_parameter_unless_excluded(exclude):
    """Without exclusion every parameter follows FlatCLR's rule; excluded BN and biases take plain momentum SGD
    with the lr in the buffer and no decay (what FlatCLR's unused exclusion lists were meant to do)."""
    model = model_with_edge_cases()
    del model.unused
    config = OptimConfig(name="lars", lr=0.6, momentum=0.9, weight_decay=1e-6, lars_denominator="decayed-grad",
                         exclude_bn_bias=exclude)
    optimizer = build_optimizer(model, config, torch.device("cpu"))
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers = {}
    for step, lr in enumerate(LRS):
        grads = random_grads(model, step)
        for name, p in model.named_parameters():
            p.grad = grads[name]
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        for name in weights:
            if exclude and weights[name].ndim == 1:  # momentum SGD, lr inside the buffer, no decay
                buffers[name] = 0.9 * buffers.get(name, torch.zeros_like(weights[name])) + lr * grads[name]
                weights[name] = weights[name] - buffers[name]
            else:
                single = {name: weights[name]}
                flatclr_step(single, {name: grads[name]}, buffers, lr, 0.9, 1e-6, 1e-3)
                weights[name] = single[name]
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), weights[name], rtol=1e-6, atol=1e-9, msg=name)
    moved = not torch.equal(model[1].bias.detach(), torch.zeros(4))
    assert moved == exclude  # the zero-initialised BN shift moves only when it is out of the trust ratio


def test_a_step_never_waits_on_the_host():
    """No scalar read or host copy per parameter (FlatCLR's LARS reads each trust ratio with .item())."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "host_sync", Path(__file__).parents[1] / "methods" / "test_host_sync.py")
    host_sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host_sync)
    for denominator in ("norm-sum", "decayed-grad"):
        model = model_with_edge_cases()
        config = OptimConfig(name="lars", lars_denominator=denominator, exclude_bn_bias=True)
        optimizer = build_optimizer(model, config, torch.device("cpu"))
        for name, p in model.named_parameters():
            p.grad = None if name == "unused" else torch.randn_like(p)
        with host_sync.HostSyncs() as watch:
            optimizer.step()
        assert watch.found == [], denominator
