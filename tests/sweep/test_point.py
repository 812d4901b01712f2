"""Where a sweep's run is placed: its folder, its name, its device, and its W&B group."""
from __future__ import annotations

from pathlib import Path

from fastlt.sweep.plan import read_sweep
from fastlt.sweep.point import placement


def test_a_run_lives_in_the_sweep_folder_and_logs_to_the_sweeps_wandb_group_unless_one_is_named(
        tmp_path: Path) -> None:
    sweep = tmp_path / "grid.toml"
    sweep.write_text('recipes = ["digits_lt/simclr"]\nseeds = [3]\n')
    (point,) = read_sweep(sweep).points
    recipe = point.recipe(*placement(tmp_path / "my-sweep", point, "cpu"))
    assert (recipe.train.out_dir, recipe.train.name) == (str(tmp_path / "my-sweep" / "runs"), "simclr_seed3")
    assert (recipe.train.device, recipe.train.seed, recipe.train.wandb_group) == ("cpu", 3, "my-sweep")

    sweep.write_text('recipes = ["digits_lt/simclr"]\n[set]\n"train.wandb_group" = "table-1"\n')
    (point,) = read_sweep(sweep).points
    assert point.recipe(*placement(tmp_path / "my-sweep", point, "cpu")).train.wandb_group == "table-1"
