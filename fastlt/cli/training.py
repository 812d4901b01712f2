"""Training commands: `fastlt pretrain` runs (or resumes) self-supervised pretraining from a recipe, and
`fastlt recipe` shows the shipped recipes and every key a recipe has.

Each command imports the training code inside itself, so that `fastlt --help` answers without loading torch.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from fastlt.cli.shared import DEVICE_HELP, PRECISION_HELP, DeviceName, user_errors
from fastlt.errors import FastltError


@click.command()
@click.argument("recipe", required=False)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a recipe value.")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue this run folder from its last checkpoint.")
@click.option("--resume-if-exists", is_flag=True,
              help="Continue the run named by train.name if it has a checkpoint, else start it (for launchers that "
                   "rerun the command: torchrun --max-restarts, a Slurm requeue).")
@click.option("--split", type=click.Path(path_type=Path),
              help="Pretrain on this split file (SDCLR format, e.g. a published one); same as --set data.split=FILE.")
@click.option("--device", type=DeviceName(), help=DEVICE_HELP + " Same as --set train.device=...")
@click.option("--precision", help=PRECISION_HELP + " Same as --set train.precision=...")
@click.option("--until-epoch", type=click.IntRange(min=1), help="Stop after this epoch (the schedule still spans train.epochs).")
@click.option("--list", "list_methods", is_flag=True, help="Print the method presets and the axes' choices, and exit.")
@user_errors
def pretrain(recipe: str | None, overrides: tuple[str, ...], resume: Path | None, resume_if_exists: bool,
             split: Path | None, device: str | None, precision: str | None, until_epoch: int | None,
             list_methods: bool) -> None:
    """Self-supervised pretraining from a TOML recipe or a shipped recipe's name (e.g. cifar100_lt/bcl-d).

    Progress goes to stderr; the run folder is printed last on stdout.
    """
    if list_methods:
        from fastlt.methods import INCOMPATIBLE, PRESETS, VIEW_FORWARD_CONFLICTS, axis_choices

        click.echo("presets (method.name), one choice per axis:")
        for name, axes in PRESETS.items():
            click.echo(f"  {name:10} " + ", ".join(f"{axis}={choice}" for axis, choice in vars(axes).items()))
        click.echo("axes (method.<axis> changes a preset's choice):")
        for axis, choices in axis_choices().items():
            click.echo(f"  {axis:21} {' | '.join(choices)}")
        click.echo("cannot be combined:")
        for axis_a, choice_a, axis_b, choice_b, why in INCOMPATIBLE:
            click.echo(f"  {axis_a}={choice_a} with {axis_b}={choice_b}: {why}")
        for (encoder, view_forward), why in VIEW_FORWARD_CONFLICTS.items():
            click.echo(f"  encoder={encoder} with view_forward={view_forward}: {why}")
        return
    from fastlt.recipe import find_recipe, load_recipe, option_overrides
    from fastlt.train.distributed import launched_ranks
    from fastlt.train.trainer import pretrain as run_pretraining
    from fastlt.train.trainer import pretrain_or_resume, resume_run

    check_device_option(device)
    shortcuts = {"--split": ("data.split", split and str(split.resolve())), "--device": ("train.device", device),
                 "--precision": ("train.precision", precision)}
    overrides = (*overrides, *option_overrides(shortcuts))
    if resume is not None:
        if recipe is not None:
            raise FastltError("pretrain: give a RECIPE or --resume RUN_DIR, not both")
        if resume_if_exists:
            raise FastltError("pretrain: --resume RUN_DIR or --resume-if-exists (with a RECIPE), not both")
        run_dir = resume_run(resume, overrides, until_epoch=until_epoch)
    else:
        if recipe is None:
            raise FastltError("pretrain: missing RECIPE (a TOML file, or a shipped name such as digits_lt/simclr)")
        path = find_recipe(recipe)
        if resume_if_exists:
            run_dir = pretrain_or_resume(load_recipe(path, overrides), str(path), overrides, until_epoch)
        else:
            run_dir = run_pretraining(load_recipe(path, overrides), str(path), until_epoch=until_epoch)
    if launched_ranks().main:  # under torchrun, one line from rank 0
        click.echo(str(run_dir))


def check_device_option(device: str | None) -> None:
    """Refuse an unavailable ``--device`` in one line naming it, before a command that passes it on as
    train.device does any work."""
    if device is not None:
        from fastlt.hardware import resolve_device

        resolve_device(device, f"--device {device}")


@click.group("recipe")
def recipe_group() -> None:
    """Inspect recipes: the shipped ones, and every key with its value, its default and what it means."""


@recipe_group.command("show")
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a recipe value.")
@user_errors
def recipe_show(recipe: str, overrides: tuple[str, ...]) -> None:
    """Every key of RECIPE (a TOML file or a shipped name) with its resolved value, default and meaning.

    A '*' marks values that differ from the default.
    """
    from fastlt.recipe import find_recipe, load_recipe, recipe_keys

    path = find_recipe(recipe)
    keys = recipe_keys(load_recipe(path, overrides))
    click.echo(f"{path}")
    width = {column: max(len(json.dumps(getattr(k, column))) for k in keys) for column in ("value", "default")}
    key_width = max(len(k.key) for k in keys)
    for k in keys:
        mark = "*" if k.value != k.default else " "
        click.echo(f"{mark} {k.key:{key_width}}  {json.dumps(k.value):{width['value']}}  "
                   f"{json.dumps(k.default):{width['default']}}  {k.meaning}")


@recipe_group.command("list")
@user_errors
def recipe_list() -> None:
    """The shipped recipes by data set: each name, its method and its purpose (the recipe file's first comment line).

    Pretrain one with `fastlt pretrain DATASET/NAME`.
    """
    from fastlt.recipe import load_recipe, recipe_purpose, shipped_recipes

    rows: dict[str, list[tuple[str, str, str]]] = {}
    for name, path in shipped_recipes().items():
        data_set, recipe = name.split("/")
        rows.setdefault(data_set, []).append((recipe, load_recipe(path).method.name, recipe_purpose(path)))
    name_width = max(len(row[0]) for group in rows.values() for row in group)
    method_width = max(len(row[1]) for group in rows.values() for row in group)
    for data_set, group in rows.items():
        click.echo(data_set)
        for recipe, method, purpose in group:
            click.echo(f"  {recipe:{name_width}}  {method:{method_width}}  {purpose}".rstrip())


@recipe_group.command("keys")
def recipe_keys_table() -> None:
    """The Markdown table of every recipe key, its default and meaning (docs/recipes.md's)."""
    from fastlt.recipe import keys_markdown

    click.echo(keys_markdown())
