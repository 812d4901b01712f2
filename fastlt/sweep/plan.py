"""A sweep file read into its runs: recipes x grid x splits x seeds, each a point with a name of its own.

The file (docs/sweeps.md) is TOML::

    recipes = ["digits_lt/simclr", "digits_lt/bcl-d"]  # shipped names, or recipe files relative to this one
    seeds = [1, 2]                                     # train.seed of the runs (default: the recipe's own)
    splits = ["my_split1.npy", "my_split2.npy"]        # data.split of the runs (default: the recipe's own)
    shots = ["full", "100"]                            # what linear-eval measures after pretraining
    random_init = true                                 # also a random-init backbone's numbers (a baseline)
    [set]                                              # every run: section.key = value (or [set.train] tables)
    "train.epochs" = 2
    [grid]                                             # every combination of these values
    "optim.lr" = [0.5, 1.0]

A point's name is made of what tells it apart (recipe, grid values, split, seed), so the same file always
gives the same names, and a second invocation finds the runs the first one made. Every point's recipe is
loaded with its overrides here, before anything runs: an unknown key, a bad value or a missing split file
is one line naming the sweep file.
"""
from __future__ import annotations

import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastlt.data.splits import split_name
from fastlt.data.store import STORE_LIST, Store
from fastlt.errors import FastltError
from fastlt.files import read_text
from fastlt.methods import resolve_axes
from fastlt.recipe import RECIPE_RELATIVE_PATHS, Override, Recipe, find_recipe, load_recipe

TOP_LEVEL_KEYS = {"recipes", "seeds", "splits", "shots", "random_init", "set", "grid"}
PATH_KEYS = {f"{section}.{key}" for section, keys in RECIPE_RELATIVE_PATHS.items() for key in keys} | {"data.store"}
NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its folder name, recipe, overrides and the labels its table row carries."""

    name: str
    recipe_path: Path
    overrides: tuple[Override, ...]
    labels: dict[str, str] = field(default_factory=dict)  # method, setting, split, seed
    shots: tuple[str, ...] = ("full",)
    random_init: bool = False  # also evaluate a random-init backbone of the same architecture

    def recipe(self, *more: Override | str) -> Recipe:
        """The point's recipe with its overrides (and ``more``)."""
        return load_recipe(self.recipe_path, [*self.overrides, *more])


@dataclass(frozen=True)
class SweepPlan:
    """The points of one sweep file, in the order they run."""

    source: Path
    points: tuple[SweepPoint, ...]

    def point(self, name: str) -> SweepPoint:
        """The point called ``name``; a one-line error naming the sweep file otherwise."""
        for point in self.points:
            if point.name == name:
                return point
        raise FastltError(f"{self.source}: no run named {name!r} in this sweep")


def flat_settings(table: dict[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 2}} and {"train.epochs": 2} alike -> {"train.epochs": 2}."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        found = flat_settings(value, where, f"{dotted}.") if isinstance(value, dict) else {dotted: value}
        for name in found:
            if name.count(".") != 1:
                raise FastltError(f"{where}: {name!r} is not a section.key recipe setting")
            if name in flat:  # "train.epochs" beside [set.train] epochs: which wins is nobody's guess
                raise FastltError(f"{where}: {name} is given twice; say it in one place")
        flat |= found
    return flat


def _absolute(key: str, value: Any, folder: Path) -> Any:
    """Relative store, split and list paths are read against the sweep file's folder, as a recipe's are."""
    if key in PATH_KEYS and isinstance(value, str) and value and not value.startswith(STORE_LIST):
        return str((folder / value).resolve()) if not Path(value).is_absolute() else value
    return value


def _override(key: str, value: Any, typed: str) -> Override:
    return Override(f"{key}={json.dumps(value)}", typed)


def _short(value: Any) -> str:
    """A value as a name part: 0.5, true, cosine; a path by its stem."""
    text = Path(value).stem if isinstance(value, str) and "/" in value else json.dumps(value).strip('"')
    return NAME_UNSAFE.sub("-", text)


def _list_of(document: dict[str, Any], key: str, kind: type, where: str) -> list[Any]:
    values = document.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
        raise FastltError(f"{where}: {key} must be a list of {kind.__name__}s, got {values!r}")
    return values


def read_sweep(path: Path) -> SweepPlan:
    """The points of the sweep file at ``path``, every one's recipe loaded and checked."""
    path = Path(path)
    document = _document(path)
    folder = path.parent
    settings = flat_settings(document.get("set", {}), f"{path}: [set]")
    grid = flat_settings(document.get("grid", {}), f"{path}: [grid]")
    sources = [("[set]", set(settings)), ("[grid]", set(grid)),
               ("seeds", {"train.seed"} if document["seeds"] else set()),
               ("splits", {"data.split"} if document["splits"] else set())]
    for (one, keys), (other, other_keys) in itertools.combinations(sources, 2):
        if keys & other_keys:  # which would win is nobody's guess from the file
            raise FastltError(f"{path}: {min(keys & other_keys)} is set by {one} and by {other}; say it in one place")
    common = [_override(key, _absolute(key, value, folder), f"{path}: [set] {key}") for key, value in settings.items()]
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise FastltError(f"{path}: [grid] {key} must be a non-empty list of values, got {values!r}")
    recipe_paths = [_recipe_path(name, folder, path) for name in document["recipes"]]
    stems = [p.stem for p in set(recipe_paths)]
    points = []
    product = itertools.product(recipe_paths, itertools.product(*grid.values()), document["splits"] or [None],
                                document["seeds"] or [None])
    for recipe_path, values, split, seed in product:
        method = recipe_path.stem if stems.count(recipe_path.stem) == 1 else \
            f"{recipe_path.parent.name}-{recipe_path.stem}"
        setting = dict(zip(grid, values))
        overrides = [*common, *(_override(k, _absolute(k, v, folder), f"{path}: [grid] {k} = {v!r}")
                                for k, v in setting.items())]
        parts = [method, *(f"{key.partition('.')[2]}={_short(value)}" for key, value in setting.items())]
        if split is not None:
            overrides.append(_override("data.split", _absolute("data.split", split, folder),
                                       f"{path}: splits {split!r}"))
            parts.append(f"split-{_short(split_name(split))}")
        if seed is not None:
            overrides.append(_override("train.seed", seed, f"{path}: seeds {seed}"))
            parts.append(f"seed{seed}")
        point = SweepPoint("_".join(parts), recipe_path, tuple(overrides), shots=document["shots"],
                           random_init=document["random_init"])
        recipe = point.recipe()  # every point checked before anything runs: its keys, values and method
        try:
            resolve_axes(recipe)
        except FastltError as error:
            raise FastltError(f"{path}: run {point.name}: {error}") from None
        labels = {"method": method, "setting": ", ".join(f"{k}={_short(v)}" for k, v in setting.items()) or "-",
                  "split": split_name(recipe.data.split), "seed": str(recipe.train.seed)}
        points.append(replace(point, labels=labels))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise FastltError(f"{path}: two runs would be named {twice!r} (a recipe, split or seed listed twice?)")
    return SweepPlan(path, tuple(points))


def _document(path: Path) -> dict[str, Any]:
    """The sweep file's top level, checked: its keys, its lists, its split files (which must exist)."""
    try:
        document = tomllib.loads(read_text(path, missing=f"{path}: no such sweep file"))
    except tomllib.TOMLDecodeError as error:
        raise FastltError(f"{path}: not valid TOML ({error})") from None
    unknown = sorted(set(document) - TOP_LEVEL_KEYS)
    if unknown:
        raise FastltError(f"{path}: unknown key {unknown[0]!r} (a sweep file has {', '.join(sorted(TOP_LEVEL_KEYS))})")
    for key, kind in (("recipes", str), ("seeds", int), ("splits", str)):
        document[key] = _list_of(document, key, kind, str(path))
    if not document["recipes"]:
        raise FastltError(f"{path}: names no recipes (recipes = [\"digits_lt/simclr\", ...])")
    shots = document.get("shots", ["full"])
    if not isinstance(shots, list) or not all(str(s) == "full" or str(s).isdigit() for s in shots):
        raise FastltError(f"{path}: shots must be a list of \"full\" and numbers of shots, got {shots!r}")
    document["shots"] = tuple(str(s) for s in shots)
    document.setdefault("random_init", False)
    if not isinstance(document["random_init"], bool):
        raise FastltError(f"{path}: random_init must be true or false, got {document['random_init']!r}")
    for split in document["splits"]:
        split_file = Path(_absolute("data.split", split, path.parent))
        if not split.startswith(STORE_LIST) and not split_file.is_file():
            raise FastltError(f"{path}: splits: {split_file}: no such split file")
    return document


def check_stores(plan: SweepPlan) -> None:
    """Every store the runs read exists and is one (checked once, before anything starts)."""
    for store in sorted({point.recipe().data.store for point in plan.points}):
        try:
            Store.open(Path(store))
        except FastltError as error:
            raise FastltError(f"{plan.source}: data.store: {error}") from None


def _recipe_path(name: str, folder: Path, sweep_file: Path) -> Path:
    """A recipe file relative to the sweep file, or a shipped recipe by name."""
    beside = folder / name
    if beside.suffix == ".toml" and beside.is_file():
        return beside.resolve()
    try:
        return find_recipe(name).resolve()
    except FastltError as error:
        raise FastltError(f"{sweep_file}: recipes: {error}") from None
