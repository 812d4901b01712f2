"""fastlt.sweep.plan: a sweep file read into named points, and a one-line error naming the file for each bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fastlt.errors import FastltError
from fastlt.sweep.plan import SweepPlan, check_stores, read_sweep

ROOT = Path(__file__).resolve().parents[2]
DIGITS_SPLIT = ROOT / "splits" / "digits_lt" / "ratio10_seed1.npy"
RECIPES = 'recipes = ["digits_lt/simclr", "digits_lt/bcl-d"]\n'


def sweep_file(folder: Path, text: str, name: str = "s.toml") -> Path:
    """The sweep file ``text`` written in ``folder``, as a user would keep it beside its data."""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def read(folder: Path, text: str) -> SweepPlan:
    return read_sweep(sweep_file(folder, text))


def refused(folder: Path, text: str, *fragments: str) -> str:
    """The error read_sweep gives for ``text``: one line, naming the sweep file and every fragment."""
    path = sweep_file(folder, text)
    with pytest.raises(FastltError) as caught:
        read_sweep(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_product_names_are_deterministic_and_distinct(tmp_path: Path) -> None:
    """2 recipes x a 2-value grid x 2 seeds = 8 points, named recipe_key=value_seedN in product order."""
    text = RECIPES + 'seeds = [1, 2]\n[grid]\n"optim.lr" = [0.5, 1.0]\n'
    plan = read(tmp_path, text)
    names = [point.name for point in plan.points]
    assert names == [f"{method}_lr={lr}_seed{seed}" for method in ("simclr", "bcl-d")
                     for lr in ("0.5", "1.0") for seed in (1, 2)]
    assert len(set(names)) == 8
    # The same file read again (from another folder object) gives the same names: a rerun finds its runs.
    assert [point.name for point in read(tmp_path, text).points] == names
    assert plan.point("bcl-d_lr=1.0_seed2").labels == {"method": "bcl-d", "setting": "optim.lr=1.0",
                                                        "split": "ratio10_seed1", "seed": "2"}


def test_each_point_recipe_has_its_values(tmp_path: Path) -> None:
    plan = read(tmp_path, RECIPES + 'seeds = [3, 4]\n[set]\n"train.epochs" = 2\n[grid]\n"optim.lr" = [0.5, 1.0]\n')
    seen = {(point.labels["method"], point.recipe().optim.lr, point.recipe().train.seed) for point in plan.points}
    assert seen == {(method, lr, seed) for method in ("simclr", "bcl-d") for lr in (0.5, 1.0) for seed in (3, 4)}
    assert {point.recipe().train.epochs for point in plan.points} == {2}
    assert {point.recipe().method.name for point in plan.points} == {"simclr", "bcl-d"}


def test_set_dotted_keys_and_nested_tables_are_the_same(tmp_path: Path) -> None:
    dotted = read(tmp_path, RECIPES + '[set]\n"train.epochs" = 2\n"model.width" = 4\n')
    nested = read(tmp_path, RECIPES + '[set.train]\nepochs = 2\n[set.model]\nwidth = 4\n')
    assert [p.overrides for p in dotted.points] == [p.overrides for p in nested.points]
    assert [p.name for p in dotted.points] == [p.name for p in nested.points] == ["simclr", "bcl-d"]
    recipe = nested.points[0].recipe()
    assert (recipe.train.epochs, recipe.model.width) == (2, 4)


def test_relative_store_and_split_paths_are_read_against_the_sweep_folder(tmp_path: Path) -> None:
    """A relative data.store or split is the sweep file's neighbour, not the current folder's."""
    (tmp_path / "splits").mkdir()
    shutil.copy(DIGITS_SPLIT, tmp_path / "splits" / "mine.npy")
    plan = read(tmp_path, 'recipes = ["digits_lt/simclr"]\nsplits = ["splits/mine.npy"]\n'
                          '[set]\n"data.store" = "digits"\n')
    (point,) = plan.points
    assert point.name == "simclr_split-mine"
    recipe = point.recipe()
    assert Path(recipe.data.store) == (tmp_path / "digits").resolve()
    assert Path(recipe.data.split) == (tmp_path / "splits" / "mine.npy").resolve()
    assert point.labels["split"] == "mine"


def test_split_and_seed_name_parts(tmp_path: Path) -> None:
    for stem in ("a", "b"):
        shutil.copy(DIGITS_SPLIT, tmp_path / f"{stem}.npy")
    plan = read(tmp_path, 'recipes = ["digits_lt/simclr"]\nsplits = ["a.npy", "b.npy"]\nseeds = [7]\n'
                          '[grid]\n"method.temperature" = [0.2]\n')
    assert [p.name for p in plan.points] == ["simclr_temperature=0.2_split-a_seed7",
                                             "simclr_temperature=0.2_split-b_seed7"]


def test_recipe_file_beside_the_sweep_file(tmp_path: Path) -> None:
    """A recipe named by a path relative to the sweep file is read from there, its stem naming the method."""
    shutil.copy(ROOT / "pipelines" / "digits_lt" / "simclr.toml", tmp_path / "mine.toml")
    (tmp_path / "mine.toml").write_text((tmp_path / "mine.toml").read_text().replace(
        '"../../splits/digits_lt/ratio10_seed1.npy"', f'"{DIGITS_SPLIT}"'))
    (point,) = read(tmp_path, 'recipes = ["mine.toml"]\n').points
    assert point.name == "mine" and point.recipe_path == (tmp_path / "mine.toml").resolve()


@pytest.mark.parametrize(("text", "fragments"), [
    (RECIPES + "epochs = 3\n", ("unknown key 'epochs'",)),
    (RECIPES + '[grid]\n"optim.lrr" = [0.1]\n', ("optim.lrr",)),
    (RECIPES + '[set]\n"optim.lrr" = 0.1\n', ("optim.lrr",)),
    (RECIPES + '[set]\nepochs = 3\n', ("'epochs'", "section.key")),
    (RECIPES + '[set]\n"train.epochs" = "x"\n', ("train.epochs", "expected int")),
    (RECIPES + 'splits = ["nowhere.npy"]\n', ("nowhere.npy", "no such split file")),
    ('recipes = ["digits_lt/no-such-recipe"]\n', ("no-such-recipe",)),
    ("recipes = []\n", ("names no recipes",)),
    ("seeds = [1]\n", ("names no recipes",)),
    (RECIPES + '[grid]\n"optim.lr" = 0.5\n', ("optim.lr", "non-empty list")),
    (RECIPES + '[grid]\n"optim.lr" = []\n', ("optim.lr", "non-empty list")),
    (RECIPES + 'seeds = ["one"]\n', ("seeds must be a list of ints",)),
    (RECIPES + "seeds = [1\n", ("not valid TOML",)),
    ('recipes = ["digits_lt/simclr", "digits_lt/simclr"]\n', ("two runs would be named 'simclr'",)),
    (RECIPES + "seeds = [1, 1]\n", ("two runs would be named 'simclr_seed1'",)),
], ids=["top-level key", "grid key", "set key", "set not section.key", "set bad value",
        "missing split", "unknown recipe",
        "empty recipes", "no recipes", "grid scalar", "grid empty", "seed not int", "bad toml", "recipe twice",
        "seed twice"])
def test_bad_sweep_file_is_one_line_naming_it(tmp_path: Path, text: str, fragments: tuple[str, ...]) -> None:
    refused(tmp_path, text, *fragments)


def test_missing_sweep_file(tmp_path: Path) -> None:
    with pytest.raises(FastltError, match="no such sweep file") as caught:
        read_sweep(tmp_path / "absent.toml")
    assert str(tmp_path / "absent.toml") in str(caught.value)


def test_unknown_point_name(tmp_path: Path) -> None:
    plan = read(tmp_path, RECIPES)
    with pytest.raises(FastltError, match="no run named 'sdclr'"):
        plan.point("sdclr")


def test_shots_are_read_as_a_list(tmp_path: Path) -> None:
    (point,) = read(tmp_path, 'recipes = ["digits_lt/simclr"]\nshots = ["full", "100"]\n').points
    assert point.shots == ("full", "100")
    (point,) = read(tmp_path, 'recipes = ["digits_lt/simclr"]\n').points
    assert point.shots == ("full",)


def test_shots_that_are_not_a_list_are_refused(tmp_path: Path) -> None:
    """shots = "100" must not become the shots "1", "0", "0" (found only at evaluation, after pretraining)."""
    refused(tmp_path, 'recipes = ["digits_lt/simclr"]\nshots = "100"\n', "shots")


@pytest.mark.parametrize(("text", "key", "one", "other"), [
    (RECIPES + '[set]\n"optim.lr" = 0.5\n[grid]\n"optim.lr" = [0.5, 1.0]\n', "optim.lr", "[set]", "[grid]"),
    (RECIPES + 'seeds = [1]\n[set]\n"train.seed" = 3\n', "train.seed", "[set]", "seeds"),
    (RECIPES + 'seeds = [1]\n[grid]\n"train.seed" = [3, 4]\n', "train.seed", "[grid]", "seeds"),
    (RECIPES + f'splits = ["{DIGITS_SPLIT}"]\n[set]\n"data.split" = "{DIGITS_SPLIT}"\n', "data.split", "[set]",
     "splits"),
], ids=["set and grid", "seeds and set", "seeds and grid", "splits and set"])
def test_a_setting_given_in_two_places_is_refused(tmp_path: Path, text: str, key: str, one: str, other: str) -> None:
    """Which of two places would win is not in the file: the user is asked to say it once."""
    refused(tmp_path, text, f"{key} is set by {one} and by {other}; say it in one place")


def test_a_grid_value_naming_an_unknown_method_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """The method is resolved for every point by read_sweep, so a typo in the grid is not found mid-sweep."""
    refused(tmp_path, RECIPES + '[grid]\n"method.name" = ["simclr", "bcld"]\n', "_name=bcld", "unknown method")


@pytest.mark.parametrize("store", ["nowhere", "empty"], ids=["missing", "not a store"])
def test_check_stores_refuses_a_store_that_is_not_one(tmp_path: Path, store: str) -> None:
    """A bad data.store is one line naming the sweep file, before any worker starts (and fails on it)."""
    (tmp_path / "empty").mkdir()
    plan = read(tmp_path, f'recipes = ["digits_lt/simclr"]\n[set]\n"data.store" = "{store}"\n')
    with pytest.raises(FastltError) as caught:
        check_stores(plan)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{plan.source}: data.store:"), message
    assert str(tmp_path / store) in message, message


def test_check_stores_passes_a_real_store(tmp_path: Path, digits_store: Path) -> None:
    check_stores(read(tmp_path, RECIPES + f'[set]\n"data.store" = "{digits_store}"\n'))


def test_a_key_given_twice_in_set_is_refused(tmp_path: Path) -> None:
    """"train.epochs" beside [set.train] epochs is valid TOML, and one of them would silently win."""
    sweep = tmp_path / "twice.toml"
    sweep.write_text('recipes = ["digits_lt/simclr"]\n[set]\n"train.epochs" = 2\n[set.train]\nepochs = 3\n')
    with pytest.raises(FastltError, match=r"^.*twice\.toml: \[set\]: train\.epochs is given twice; say it in one place$"):
        read_sweep(sweep)
