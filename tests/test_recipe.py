"""Recipes: defaults, overrides, and one-line errors that name the file and the key."""
import dataclasses
import re
from pathlib import Path

import pytest

from fastlt.errors import FastltError
from fastlt.methods import PRESETS
from fastlt.recipe import Recipe, find_recipe, keys_markdown, load_recipe, recipe_from_dict, recipe_keys

ROOT = Path(__file__).resolve().parents[1]

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def test_every_shipped_recipe_loads():
    recipes = sorted(PIPELINES.rglob("*.toml"))
    assert len(recipes) >= 3
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.data.store and recipe.method.name


def test_values_and_overrides(tmp_path):
    path = write(tmp_path, '[optim]\nlr = 1\n[views]\nscale = [0.2, 1]\n')
    recipe = load_recipe(path, ["train.epochs=3", "method.name=simclr", "optim.exclude_bn_bias=true", "eval.knn=[5]"])
    assert recipe.optim.lr == 1.0 and isinstance(recipe.optim.lr, float)
    assert recipe.views.scale == (0.2, 1.0)
    assert recipe.train.epochs == 3 and recipe.optim.exclude_bn_bias is True and recipe.eval.knn == (5,)
    assert recipe_from_dict(recipe.to_dict(), "round trip") == recipe


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("[optim]\nlrr = 1\n", [], "optim.lrr: unknown key"),
        ("[optimizer]\nlr = 1\n", [], "unknown section"),
        ("[train]\nepochs = 'ten'\n", [], "train.epochs: expected int"),
        ("[train]\nepochs = 1.5\n", [], "train.epochs: expected int"),
        ("[views]\nscale = [0.1]\n", [], "views.scale: expected a list of 2"),
        ("[views]\nscale = [0.5, 0.1]\n", [], "views.scale"),
        ("[views]\ninterpolation = 'lanczos'\n", [], "views.interpolation"),
        ("[train\n", [], "not valid TOML"),
        ("", ["train.epochs"], "expected section.key=value"),
        ("", ["train.nope=1"], "train.nope: unknown key"),
        ("", ["train.epochs=0"], "train.epochs"),
    ],
)
def test_errors_name_file_or_option_and_key(tmp_path, text, overrides, message):
    """A mistake in the file names the file; a bad --set value names the option, not the file."""
    path = write(tmp_path, text)
    with pytest.raises(FastltError, match=message) as error:
        load_recipe(path, overrides)
    if overrides:
        assert str(path) not in str(error.value)
        if "=" in overrides[0]:
            assert str(error.value).startswith(f"--set {overrides[0]}: ")
    else:
        assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_a_mistyped_name_gets_the_closest_names_not_all_of_them(tmp_path):
    """Sections, keys and shipped recipes: "did you mean" the nearest names, or where to find them all."""
    def message(path_or_name, overrides=()):
        with pytest.raises(FastltError) as error:
            load_recipe(find_recipe(path_or_name), overrides)
        return str(error.value)

    for text, said in (("[trian]\nepochs = 1\n", "unknown section 'trian' (did you mean 'train'?)"),
                       ("[optimiser]\nlr = 1\n", "unknown section 'optimiser' (did you mean 'optim'?)"),
                       ("[xyz]\n", "unknown section 'xyz' (expected one of data, views, model, method, optim, "
                                   "train, eval)"),
                       ("[train]\nepoch = 1\n", "train.epoch: unknown key (did you mean 'epochs'?)")):
        path = write(tmp_path, text)
        assert message(path) == f"{path}: {said}"
    assert message(write(tmp_path, ""), ["optim.zzz=1"]) == ("--set optim.zzz=1: optim.zzz: unknown key "
                                                             "(`fastlt recipe keys` lists them)")
    typo = message("cifar100_lt/bcl_d")
    assert typo.startswith("cifar100_lt/bcl_d: no such recipe file or shipped recipe (did you mean "
                           "'cifar100_lt/bcl-d', ") and typo.count("cifar100_lt/") <= 4, typo
    assert message("nope/nothing") == ("nope/nothing: no such recipe file or shipped recipe (`fastlt recipe list` "
                                       "shows the shipped ones)")


def test_missing_file(tmp_path):
    with pytest.raises(FastltError, match="recipe file not found"):
        load_recipe(tmp_path / "none.toml")


def test_defaults_are_the_reference_cifar_settings():
    recipe = Recipe()
    assert recipe.optim.lr == 0.5 and recipe.optim.momentum == 0.9 and recipe.train.batch_size == 512
    assert recipe.views.scale == (0.1, 1.0) and recipe.views.jitter == (0.4, 0.4, 0.4, 0.1)
    assert recipe.eval.epochs == 500 and recipe.eval.lr == 1e-2 and recipe.eval.batch_size == 1000


def test_extends_lays_a_recipe_over_its_base(tmp_path):
    (tmp_path / "base.toml").write_text('[optim]\nlr = 0.5\nmomentum = 0.8\n[train]\nepochs = 7\n')
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\n[optim]\nlr = 0.1\n[method]\nname = "sdclr"\n')
    recipe = load_recipe(child)
    assert (recipe.optim.lr, recipe.optim.momentum, recipe.train.epochs) == (0.1, 0.8, 7)
    assert recipe.method.name == "sdclr"
    (tmp_path / "base.toml").write_text('extends = "child.toml"\n')
    with pytest.raises(FastltError, match="cycle"):
        load_recipe(child)


def test_shipped_presets_keep_reference_weight_decays():
    decay = {path.stem: load_recipe(path).optim.weight_decay for path in (PIPELINES / "cifar100_lt").glob("*.toml")}
    assert decay == {"simclr": 5e-4, "bcl-i": 5e-4, "sdclr": 1e-4, "bcl-d": 1e-4,
                     "simclr-ts": 1e-4, "lotar": 5e-4, "sdclr-ts": 1e-4, "bcl-d-ts": 1e-4,
                     "supcon": 1e-4, "selfcon": 1e-4, "selfcon-su": 1e-4, "selfcon-m": 1e-4, "selfcon-mu": 1e-4,
                     "flatclr": 1e-6}
    assert load_recipe(PIPELINES / "cifar100_lt" / "bcl-d.toml").train.epochs == 2000


@pytest.mark.parametrize("data_set, split, probe, shots", [
    ("cifar100", "sdclr/cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy", "sdclr/cifar100/cifar100_trainIdxList.npy",
     "bcl/cifar100_imbSub_with_subsets/cifar100_split{subset}_test_{shots}shot.npy"),
    ("cifar10", "sdclr/cifar10_imbSub_with_subsets/split1_D_i.npy", "sdclr/cifar10/trainIdxList.npy", None),
])
@pytest.mark.parametrize("method", sorted(PRESETS))
def test_shipped_cifar_recipes_train_and_probe_on_the_published_split_1(data_set, split, probe, shots, method):
    published = ROOT / "splits" / "published"
    recipe = load_recipe(find_recipe(f"{data_set}_lt/{method}"))
    assert Path(recipe.data.split) == published / split and Path(recipe.eval.train_split) == published / probe
    assert recipe.train.drop_last is (method == "flatclr")  # FlatNCE trains on full batches only
    assert recipe.eval.groups == "thirds" and recipe.eval.shot_subsets == 5
    pattern = recipe.eval.shot_lists
    if shots is not None:
        assert pattern == str(published / shots)
    for count in (100, 50):
        assert all(Path(pattern.format(shots=count, subset=k)).is_file() for k in range(1, 6))


@pytest.mark.parametrize("data_set", ["cifar10", "cifar100"])
def test_shipped_supcon_selfcon_and_flatclr_recipes_keep_the_reference_settings(data_set):
    for method in ("supcon", "selfcon", "selfcon-su", "selfcon-m", "selfcon-mu"):
        r = load_recipe(find_recipe(f"{data_set}_lt/{method}"))
        assert (r.train.batch_size, r.optim.lr, r.optim.weight_decay, r.method.temperature, r.train.epochs) == (
            1024, 0.5, 1e-4, 0.1, 1000)
        assert r.views.scale == (0.2, 1.0) and r.model.head == "mlp" and r.method.name == method
    selfcon = load_recipe(find_recipe(f"{data_set}_lt/selfcon"))
    assert (selfcon.model.exit_after, selfcon.model.subnetwork) == (2, "fc")
    flat = load_recipe(find_recipe(f"{data_set}_lt/flatclr"))
    assert (flat.optim.name, flat.optim.lr, flat.optim.weight_decay, flat.optim.exclude_bn_bias) == (
        "lars", 0.3 * flat.train.batch_size / 256, 1e-6, False)  # FlatCLR's LARS excludes nothing (docs/flatnce.md)
    assert flat.method.temperature == 0.1 and flat.method.name == "flatclr"


def test_every_key_has_a_meaning_and_the_docs_table_is_generated():
    keys = recipe_keys()
    assert len(keys) == sum(len(dataclasses.fields(getattr(Recipe(), f.name))) for f in dataclasses.fields(Recipe))
    assert all(k.meaning and k.value == k.default for k in keys)
    page = (ROOT / "docs" / "recipes.md").read_text()
    table = re.search(r"<!-- recipe keys: generated by `fastlt recipe keys` -->\n(.*?)\n<!-- end of recipe keys -->",
                      page, re.S)
    assert table and table.group(1) == keys_markdown(), "docs/recipes.md: regenerate the key table with `fastlt recipe keys`"


def test_recipe_show_marks_what_a_recipe_and_its_overrides_change(tmp_path):
    path = write(tmp_path, 'extends = "base.toml"\n[method]\nname = "selfcon"\n')
    (tmp_path / "base.toml").write_text("[train]\nepochs = 7\n")
    shown = {k.key: k for k in recipe_keys(load_recipe(path, ["model.subnetwork=small"]))}
    assert shown["train.epochs"].value == 7 and shown["train.epochs"].default == 2000
    assert shown["model.subnetwork"].value == "small" and shown["method.name"].value == "selfcon"
    assert shown["views.scale"].value == [0.1, 1.0]  # lists, as TOML and JSON write them


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_shipped_imagenet100_recipes_keep_the_reference_settings(method):
    recipe = load_recipe(find_recipe(f"imagenet100_lt/{method}"))
    hidden = 128 if method == "lotar" else 2048  # LoTaR's head: fc to 100, then Linear(100, 128) (docs/lotar.md)
    assert (recipe.model.arch, recipe.model.stem, recipe.model.projector_hidden) == ("resnet50", "imagenet", hidden)
    views = recipe.views
    # SDCLR's and TS's RandomResizedCrop(224, interpolation=3) (train_simCLR.py:237 and :189) resize bicubic; LoTaR's,
    # FlatCLR's and SupCon's keep RandomResizedCrop's bilinear, and LoTaR's views have no blur (data/data.py:19-24)
    interpolation = "bilinear" if method.startswith(("lotar", "flatclr", "supcon", "selfcon")) else "bicubic"
    blur_p = 0.0 if method == "lotar" else 0.5
    assert (views.size, views.interpolation, views.blur_p, views.blur_sigma) == (224, interpolation, blur_p, (0.1, 2.0))
    assert views.scale == ((0.2, 1.0) if method.startswith(("supcon", "selfcon")) else (0.08, 1.0))
    if method == "flatclr":  # main.py's ImageNet defaults (docs/flatnce.md)
        assert (recipe.train.batch_size, recipe.train.epochs) == (512, 100)
    else:
        assert recipe.train.batch_size == 256 and 500 <= recipe.train.epochs <= 800
    assert (recipe.data.split, recipe.eval.train_split, recipe.eval.val_split, recipe.eval.sdclr_few_shot_list) == (
        "store:lt", "store:full", "store:val", "store:fewshot")
    assert (recipe.eval.groups, recipe.eval.center_crop, recipe.eval.sdclr_crop, recipe.eval.sdclr_batch_size) == (
        "thresholds", 224, "resized", 512)
    # train_imagenet.py: the scheduler steps after each epoch, checks every 2nd / 10th epoch, the best by top-5;
    # the TS ImageNet-100 notebook: clean split features, FS on the published 1% list
    assert (recipe.eval.sdclr_lr_step, recipe.eval.sdclr_val_every, recipe.eval.sdclr_few_shot_val_every,
            recipe.eval.sdclr_select, recipe.eval.ts_train_views, recipe.eval.ts_few_shot_list) == (
        "after-epoch", 2, 10, "top5", "clean", "store:fewshot")
    if method in ("sdclr", "sdclr-ts", "bcl-d", "bcl-d-ts"):  # SDCLR's ImageNet-100 setting
        assert (recipe.method.pruning_ratio, recipe.method.temperature) == (0.3, 0.3)
    if method in ("simclr", "simclr-ts", "sdclr", "sdclr-ts", "bcl-d", "bcl-d-ts"):  # SDCLR's and TS's SGD
        assert recipe.optim.weight_decay == 1e-4
    if method == "simclr-ts":  # the published TS row: 800 epochs
        assert recipe.train.epochs == 800 and recipe.optim.weight_decay == 1e-4
