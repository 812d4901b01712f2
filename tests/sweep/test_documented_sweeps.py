"""The sweep files docs/sweeps.md shows are real: each reads into the runs the page says it makes."""
from __future__ import annotations

import re
from pathlib import Path

from fastlt.sweep.plan import read_sweep

ROOT = Path(__file__).resolve().parents[2]


def documented_sweeps() -> list[str]:
    text = (ROOT / "docs" / "sweeps.md").read_text(encoding="utf-8")
    return [block for block in re.findall(r"```toml\n(.*?)```", text, re.S) if "recipes" in block]


def test_the_pages_sweep_files_read_into_the_runs_it_names(tmp_path: Path) -> None:
    grid, table = documented_sweeps()
    (tmp_path / "grid.toml").write_text(grid)
    plan = read_sweep(tmp_path / "grid.toml")
    assert len(plan.points) == 8 and "bcl-d_lr=0.5_seed2" in [point.name for point in plan.points]
    assert plan.points[0].recipe().data.store == str(tmp_path / "data" / "digits")

    (tmp_path / "splits").symlink_to(ROOT / "splits")  # the page places this file at the repository's root
    (tmp_path / "table.toml").write_text(table)
    plan = read_sweep(tmp_path / "table.toml")
    assert len(plan.points) == 12 and all(point.shots == ("full", "100", "50") for point in plan.points)
    assert {point.labels["split"] for point in plan.points} == {f"cifar100_split{n}_D_i" for n in (1, 2, 3)}
