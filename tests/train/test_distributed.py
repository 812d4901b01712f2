"""Two processes with gloo on the CPU against one process: the global batch's loss and gradients, the last
batch's uneven shares, BCL's memory on every rank, and a real torchrun run resumed in one process."""
from __future__ import annotations

import gc
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fastlt.data.loader import NativeLoader, batch_bounds, resident_copy, shard_bounds
from fastlt.data.store import StorePart
from fastlt.recipe import recipe_from_dict
from fastlt.checkpoint import load_checkpoint
from fastlt.train.distributed import Ranks
from fastlt.train.run_state import build_run_state, choose_hardware, load_training_data, process_device, seeded_method

WORKER = Path(__file__).with_name("ddp_ranks.py")  # what each rank runs; its helpers serve the reference too
_spec = importlib.util.spec_from_file_location("ddp_ranks", WORKER)
ddp_ranks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ddp_ranks)
inputs, tiny_method = ddp_ranks.inputs, ddp_ranks.tiny_method


class Recorder(nn.Module):
    """Stands in for a method's loss module: keeps the embeddings the method hands it."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, z1, z2, labels):
        self.seen.append((z1, z2))
        return z1.sum(), z1.new_zeros(len(z1))


def one_process_reference(method_name: str, sizes: tuple[int, int]) -> dict:
    """What DDP without sync-BN computes, in one process: each rank's share normalised on its own, the loss
    of the global batch over all embeddings, one backward (SDCLR: the reference's three forwards and two
    backward passes, whichever form the method runs)."""
    method = tiny_method(method_name)
    method.on_epoch_start(1)
    view1, view2, labels, indices = inputs(sum(sizes))
    shares = [(0, sizes[0]), (sizes[0], sum(sizes))]
    if not hasattr(method, "switch"):  # the method's own forward on each share, its loss over them all
        loss_module, recorder = method.contrast, Recorder()
        method.contrast = recorder
        for a, b in shares:
            method.forward(view1[a:b], view2[a:b], labels[a:b])
        method.contrast = loss_module
        loss, per_sample = loss_module(*(torch.cat(parts) for parts in zip(*recorder.seen)), labels)
        loss.backward()
    else:  # sdclr / bcl-d: pruned without grad, dense, backward; pruned with grad against the detached dense
        from fastlt.models.self_damaging import DENSE, PRUNED

        def branch(which, view, grad=True):
            method.switch.active = which
            with torch.set_grad_enabled(grad):
                return torch.cat([method.forward(view[a:b]) for a, b in shares])
        z2 = branch(PRUNED, view2, grad=False)
        z1 = branch(DENSE, view1)
        loss, per_sample = method.contrast(z1, z2, labels)
        loss.backward()
        pruned, _ = method.contrast(z1.detach(), branch(PRUNED, view2), labels)
        pruned.backward()
        method.switch.active = DENSE
    if method.boost is not None:
        method.boost.observe(indices, per_sample.detach())
    return {"loss": loss.detach(), "per_sample": per_sample.detach(),
            "grads": {n: p.grad for n, p in method.named_parameters() if p.grad is not None},
            "buffers": dict(method.named_buffers())}


@pytest.mark.parametrize("method_name, sizes, compiled", [
    ("simclr", (4, 4), False), ("simclr", (5, 3), False), ("bcl-d", (4, 4), False), ("bcl-d", (4, 3), False),
    ("bcl-d:sdclr_forwards=3", (4, 3), False),  # the reference's two backward passes: no_sync, unused parameters
    ("lotar:view_forward=separate", (5, 3), False),  # per-view forwards, the weights over the gathered embeddings
    ("selfcon-m", (4, 3), False),  # [B, V, D] embeddings, supervised: the labels gathered
    ("flatclr:contrast_mode=one", (5, 3), False),  # the first view's anchors only
    ("simclr", (4, 4), True),  # DDP under torch.compile, as the trainer runs it on CUDA (about 25 s to compile)
])
def test_two_ranks_compute_the_global_batch_loss_and_gradients_of_one_process(method_name, sizes, compiled, tmp_path,
                                                                                      launch):
    launched = launch.torchrun(str(WORKER), method_name, f"{sizes[0]},{sizes[1]}", str(tmp_path),
                        *(["compiled"] if compiled else []))
    assert launched.returncode == 0, launched.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    reference = one_process_reference(method_name, sizes)
    assert torch.equal(ranks[0]["loss"], ranks[1]["loss"])  # the global loss, reported alike by every rank
    for result in ranks:
        torch.testing.assert_close(result["loss"], reference["loss"], rtol=1e-4, atol=1e-6)  # compiled: fused sums
        torch.testing.assert_close(result["per_sample"], reference["per_sample"], rtol=1e-4, atol=1e-6)
        assert result["grads"].keys() == reference["grads"].keys()
        for name, grad in reference["grads"].items():
            # float32 sums in another order: equal to 5e-5 of the gradient's norm (1e-5 for the zero gradient of a
            # bias before batch norm), element by element
            assert (result["grads"][name] - grad).abs().max() <= 5e-5 * grad.norm() + 1e-5, name
    # DDP does not broadcast buffers: all but the batch-norm statistics (each rank's share's) stay equal by
    # construction, masks, temperature and BCL's memory included
    for name, buffer in ranks[0]["buffers"].items():
        if not name.endswith(("running_mean", "running_var")):
            assert torch.equal(buffer, ranks[1]["buffers"][name]), name
    if method_name.startswith("bcl-d"):  # the memory, updated from every rank's samples, as one process updates it
        for name in ("boost.momentum_loss", "boost.seen"):
            torch.testing.assert_close(ranks[0]["buffers"][name], reference["buffers"][name])


@pytest.mark.parametrize("method_name", ["sdclr", "selfcon-m"])
def test_settling_the_gradient_buckets_leaves_weights_buffers_and_gradients_as_they_were(method_name, tmp_path):
    """The throwaway step a several-process run takes first (here in a one-process gloo group, DDP live):
    afterwards nothing it could have touched differs, and DDP's buckets are rebuilt."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        settle_and_check(method_name)
    finally:
        gc.collect()  # DDP's reducer and gloo's threads go now, not at the worker's exit (an abort there)
        torch.distributed.destroy_process_group()


def settle_and_check(method_name: str) -> None:
    method = tiny_method(method_name)
    method.on_epoch_start(1)
    method.enable_distributed(torch.device("cpu"))
    before = {name: value.clone() for name, value in method.state_dict().items()}
    method.settle_gradient_buckets((6,), 0, ddp_ranks.STEP)
    after = method.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)
    assert all(parameter.grad is None for parameter in method.parameters())
    view1, view2, labels, indices = inputs(6)
    method.step((view1, view2), labels, ddp_ranks.STEP)  # the first real step's forward rebuilds them
    assert method._ddp._has_rebuilt_buckets


def test_ranks_take_disjoint_shares_of_every_global_batch_and_never_repeat_a_sample():
    part = StorePart(np.zeros((23, 2, 2, 3), np.uint8), np.arange(23) % 4)
    shares = [[(batch.indices.tolist(), batch.shard_sizes) for batch in
               NativeLoader(part, None, 6, "cpu", torch.Generator().manual_seed(5), shard=(rank, 2))]
              for rank in range(2)]
    order = torch.randperm(23, generator=torch.Generator().manual_seed(5)).tolist()  # the epoch's one permutation
    bounds = batch_bounds(23, 6, drop_last=False, world=2)
    assert bounds == [(0, 6), (6, 12), (12, 18), (18, 23)]  # the last 5 give both ranks at least 2: kept
    for (first, sizes), (second, same), (start, end) in zip(*shares, bounds):
        assert first + second == order[start:end] and sizes == same == (len(first), len(second))
    assert [sizes for _, sizes in shares[0]] == [(3, 3), (3, 3), (3, 3), (3, 2)]
    assert shard_bounds(5, 2) == [(0, 3), (3, 5)]
    assert sorted(i for batch, _ in shares[0] + shares[1] for i in batch) == list(range(23))
    assert batch_bounds(21, 6, drop_last=False, world=2)[-1] == (12, 21)  # 3 left over < 2 x 2: folded in


def test_torchrun_trains_with_one_writer_and_the_checkpoint_resumes_in_one_process(tmp_path, digits_store, launch):
    common = ["--set", f"data.store={json.dumps(str(digits_store))}", "--set", f"train.out_dir={json.dumps(str(tmp_path))}",
              "--set", "train.name=\"ddp\"", "--set", "model.width=4", "--set", "model.projector_hidden=16",
              "--set", "model.projector_out=8", "--set", "train.batch_size=64", "--set", "train.progress=false",
              "--set", "train.precision=\"fp32\"", "--set", "train.device=\"cpu\"", "--set", "train.epochs=3"]
    launched = launch.torchrun("-m", "fastlt", "pretrain", "digits_lt/bcl-i", *common, "--until-epoch", "2")
    assert launched.returncode == 0, launched.stderr[-3000:]
    run = tmp_path / "ddp"
    assert launched.stdout.strip().splitlines() == [str(run)]  # rank 0 alone prints the run folder
    record = json.loads((run / "run.json").read_text())
    assert record["distributed"] == {"world": 2, "backend": "gloo"}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2] and all(np.isfinite(line["loss"]) for line in lines)
    payload = load_checkpoint(run / "checkpoints" / "last.pt")
    assert not any(key.startswith("module.") for key in payload["model"])  # the method's own keys, no DDP prefix
    assert payload["step"] == 16  # 468 digits-LT samples in global batches of 64: 8 steps an epoch
    resumed = subprocess.run([sys.executable, "-m", "fastlt", "pretrain", "--resume", str(run)],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_each_process_gets_its_own_gpu_and_its_own_view_randomness(digits_store, tmp_path):
    assert process_device(torch.device("cpu"), Ranks(1, 2, 1)) == torch.device("cpu")  # cuda: test_distributed_runs
    np.save(tmp_path / "split.npy", np.arange(600))
    recipe = recipe_from_dict({"data": {"store": str(digits_store), "split": str(tmp_path / "split.npy")},
                               "model": {"width": 4}, "train": {"batch_size": 64, "device": "cpu",
                                                                "precision": "fp32", "monitor_every": 1}}, "test")
    seeds = []
    for rank in range(2):
        ranks = Ranks(rank, 2, rank)
        data = load_training_data(recipe, torch.device("cpu"), torch.Generator().manual_seed(1), ranks)
        method = seeded_method(recipe, data.part_size)
        state = build_run_state(recipe, data, choose_hardware(recipe, method, 100), method, ranks)
        seeds.append(state.view_generator.initial_seed())
        assert (data.monitor is None) == (rank == 1)  # the held-out monitor runs on rank 0 only
    assert seeds == [2, 3]  # train.seed + 1 + rank


def test_the_resident_split_is_copied_in_chunks_equal_to_one_gather():
    images = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    rows = np.random.default_rng(1).permutation(50)[:37]
    assert torch.equal(resident_copy(images, rows, torch.device("cpu"), chunk=8), torch.from_numpy(images[rows]))
