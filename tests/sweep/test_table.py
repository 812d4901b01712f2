"""fastlt.sweep.table: the runs' eval.json reports gathered into one row per (method, setting, protocol, evaluation),
mean +- std (ddof 0) over the row's runs (seeds, splits)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from fastlt.evaluate.report import summarise_subsets
from fastlt.sweep.plan import SweepPlan, read_sweep
from fastlt.sweep.state import run_dir_of, write_plan
from fastlt.sweep.table import TABLE_LABELS, sweep_table


def _compare_helpers() -> ModuleType:
    """tests/evaluate/test_compare.py, for its eval.json writer (the suite imports in importlib mode: tests/ is
    not a package)."""
    path = Path(__file__).resolve().parents[1] / "evaluate" / "test_compare.py"
    spec = importlib.util.spec_from_file_location("fastlt_tests_evaluate_test_compare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _compare_helpers()
accuracy, write_eval = helpers.accuracy, helpers.write_eval  # accuracy(many, medium, few): 0-4 of 4 right each


def small_plan(sweep_dir: Path) -> SweepPlan:
    """simclr at lr 0.5 and 1.0, seeds 1 and 2: four runs, two rows of settings."""
    path = sweep_dir / "s.toml"
    path.write_text('recipes = ["digits_lt/simclr"]\nseeds = [1, 2]\n[grid]\n"optim.lr" = [0.5, 1.0]\n')
    plan = read_sweep(path)
    write_plan(sweep_dir, plan)
    return plan


def evaluate(sweep_dir: Path, name: str, linear: tuple[int, int, int], knn: tuple[int, int, int],
             hundred: list[tuple[int, int, int]]) -> None:
    """The run's reports as linear_eval leaves them: a full-shot one (linear, knn@1) and a 100-shot one."""
    run = run_dir_of(sweep_dir, name)
    write_eval(run, "bcl-linear-all-train", {"linear": accuracy(*linear), "knn@1": accuracy(*knn)}, sha=name)
    write_eval(run, "bcl-linear-100shot", {"linear, 100-shot": summarise_subsets([accuracy(*s) for s in hundred])},
               shots="100", sha=name)


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, SweepPlan]:
    """Three runs evaluated: lr=0.5 at seeds 1 and 2, lr=1.0 at seed 1 (its seed 2 not done)."""
    plan = small_plan(tmp_path)
    evaluate(tmp_path, "simclr_lr=0.5_seed1", (4, 2, 1), (3, 3, 0), [(4, 2, 0), (4, 4, 0)])
    evaluate(tmp_path, "simclr_lr=0.5_seed2", (4, 4, 2), (2, 1, 0), [(2, 2, 2)])
    evaluate(tmp_path, "simclr_lr=1.0_seed1", (1, 1, 1), (0, 0, 0), [(1, 0, 0)])
    return tmp_path, plan


def rows_by_key(sweep_dir: Path, plan: SweepPlan, names: list[str]) -> dict[tuple[str, str], object]:
    table = sweep_table(sweep_dir, plan, names)
    assert table.label_columns == TABLE_LABELS
    keys = [(row.labels["setting"], row.labels["evaluation"]) for row in table.rows]
    assert len(keys) == len(set(keys)), keys  # one row per (method, setting, protocol, evaluation)
    return {key: row for key, row in zip(keys, table.rows)}


def overall(*right: tuple[int, int, int]) -> list[float]:
    """Each report's overall accuracy: right answers of 12 test images (4 per class), in percent."""
    return [100 * sum(r) / 12 for r in right]


def test_one_row_per_method_setting_and_evaluation(sweep: tuple[Path, SweepPlan]) -> None:
    sweep_dir, plan = sweep
    names = [p.name for p in plan.points if (run_dir_of(sweep_dir, p.name) / "eval").is_dir()]
    rows = rows_by_key(sweep_dir, plan, names)
    assert list(rows) == [("optim.lr=0.5", "linear"), ("optim.lr=0.5", "knn@1"),
                          ("optim.lr=1.0", "linear"), ("optim.lr=1.0", "knn@1")]
    assert [rows[key].labels["runs"] for key in rows] == ["2", "2", "1", "1"]
    first = rows[("optim.lr=0.5", "linear")].labels
    assert (first["method"], first["protocol"], first["epoch"]) == ("simclr", "bcl-linear", "200")


def test_full_shot_columns_are_mean_and_std_over_the_runs(sweep: tuple[Path, SweepPlan]) -> None:
    sweep_dir, plan = sweep
    rows = rows_by_key(sweep_dir, plan, [p.name for p in plan.points[:3]])
    for evaluation, runs in (("linear", [(4, 2, 1), (4, 4, 2)]), ("knn@1", [(3, 3, 0), (2, 1, 0)])):
        full = rows[("optim.lr=0.5", evaluation)].full
        assert full["overall"] == pytest.approx(np.mean(overall(*runs)))
        assert full["std_over_subsets"]["overall"] == pytest.approx(np.std(overall(*runs)))
        few = [100 * r[2] / 4 for r in runs]  # the "few" group: class 2, 4 test images
        assert full["few"] == pytest.approx(np.mean(few))
        assert full["std_over_subsets"]["few"] == pytest.approx(np.std(few))
    single = rows[("optim.lr=1.0", "linear")].full
    assert single["overall"] == pytest.approx(25.0) and "std_over_subsets" not in single  # one run: no spread


def test_few_shot_columns_are_each_runs_mean_then_mean_and_std_over_runs(sweep: tuple[Path, SweepPlan]) -> None:
    sweep_dir, plan = sweep
    rows = rows_by_key(sweep_dir, plan, [p.name for p in plan.points[:3]])
    hundred = rows[("optim.lr=0.5", "linear")].few_shot["100"]
    per_run = [np.mean(overall((4, 2, 0), (4, 4, 0))), np.mean(overall((2, 2, 2)))]  # 58.33 and 50
    assert hundred["overall"] == pytest.approx(np.mean(per_run))
    assert hundred["std_over_subsets"]["overall"] == pytest.approx(np.std(per_run))
    assert rows[("optim.lr=0.5", "knn@1")].few_shot == {}  # no 100-shot kNN report: no value, not a zero


def test_only_the_named_runs_count(sweep: tuple[Path, SweepPlan]) -> None:
    """A run evaluated but not named done (its state says otherwise) stays out of the means."""
    sweep_dir, plan = sweep
    rows = rows_by_key(sweep_dir, plan, ["simclr_lr=0.5_seed2"])
    assert list(rows) == [("optim.lr=0.5", "linear"), ("optim.lr=0.5", "knn@1")]
    assert rows[("optim.lr=0.5", "linear")].labels["runs"] == "1"
    assert rows[("optim.lr=0.5", "linear")].full["overall"] == pytest.approx(overall((4, 4, 2))[0])


def test_markdown_shows_mean_plus_minus_std(sweep: tuple[Path, SweepPlan]) -> None:
    sweep_dir, plan = sweep
    text = sweep_table(sweep_dir, plan, [p.name for p in plan.points[:2]]).markdown()
    header, _, linear, _ = [line for line in text.splitlines() if line.startswith("|")]
    assert header.startswith("| method | setting | protocol | evaluation | runs | epoch | overall |")
    mean, std = np.mean(overall((4, 2, 1), (4, 4, 2))), np.std(overall((4, 2, 1), (4, 4, 2)))
    assert f"| simclr | optim.lr=0.5 | bcl-linear | linear | 2 | 200 | {mean:.2f} +- {std:.2f} |" in linear
