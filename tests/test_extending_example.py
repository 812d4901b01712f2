"""docs/extending.md's "Add your own method" example runs as printed, registers its objective and trains with it
(objectives from installed packages, by entry point: tests/objectives/test_plugins.py)."""
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastlt.errors import FastltError
from fastlt.methods import axis_choices
from fastlt.objectives import OBJECTIVES, register_objective
from fastlt.recipe import recipe_from_dict
from fastlt.train.trainer import pretrain

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture
def readme_objective():
    block = re.search(r"<!-- example: a custom objective -->\n```python\n(.*?)```", PAGE.read_text(), re.S)
    assert block, "docs/extending.md: the custom-objective example block is missing"
    namespace = {}
    exec(compile(block.group(1), str(PAGE), "exec"), namespace)
    yield namespace["decoupled_per_anchor"]
    OBJECTIVES.pop("dcl")


def loop_dcl(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n, batch = len(z), len(z1)
    return torch.stack([-(z[i] @ z[(i + batch) % n]) / tau + torch.log(sum(
        torch.exp(z[i] @ z[j] / tau) for j in range(n) if j not in (i, (i + batch) % n))) for i in range(n)])


def test_the_example_objective_is_registered_and_matches_its_formula(readme_objective):
    assert OBJECTIVES["dcl"] is readme_objective and "dcl" in axis_choices()["objective"]
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 4, generator=generator), torch.randn(5, 4, generator=generator)
    torch.testing.assert_close(readme_objective(z1, z2, 0.2), loop_dcl(z1, z2, 0.2), rtol=1e-5, atol=1e-5)


def test_a_recipe_trains_with_the_example_objective(readme_objective, digits_store, tmp_path):
    run = pretrain(recipe_from_dict({
        "data": {"store": str(digits_store)},
        "method": {"name": "bcl-i", "objective": "dcl"},
        "model": {"width": 4, "projector_hidden": 32, "projector_out": 16},
        "optim": {"lr": 0.1, "warmup_epochs": 1},
        "train": {"epochs": 4, "batch_size": 128, "out_dir": str(tmp_path), "progress": False,
                  "precision": "fp32", "device": "cpu", "name": "dcl"}}, "test"))
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert min(losses[1:]) < losses[0]


def test_a_name_is_registered_once(readme_objective):
    with pytest.raises(FastltError, match="objective 'dcl': a different objective is registered"):
        register_objective("dcl")(lambda z1, z2, temperature, labels=None: z1)
