"""Evaluation commands: `fastlt linear-eval` runs the papers' protocols on a run, `compare` and `plot` put
runs side by side, `export` hands the backbone to torchvision, and `reproduce` pretrains and evaluates a
published table.

Each command imports the evaluation code inside itself, so that `fastlt --help` answers without loading torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fastlt.choices import EVAL_EXITS, PROTOCOL_CHOICES
from fastlt.cli.shared import (
    DEVICE_HELP, PRECISION_CHOICES, PRECISION_HELP, CommaList, DeviceName, overwrite_option, positive_ints,
    engine_options, user_errors,
)
from fastlt.files import check_free


def shot_settings() -> CommaList:
    """Shot settings: "full" (the probe list) and/or numbers of shots, e.g. "full,100,50"."""
    return CommaList(lambda item: item == "full" or (item.isdigit() and int(item) >= 1), str,
                     "'full' and/or numbers of shots, e.g. full,100,50", allow_empty=False)


@click.command("linear-eval")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Folder for the report folders (default: <run>/eval).")
@click.option("--store", "store_path", type=click.Path(path_type=Path),
              help="Use this store instead of the recipe's (it must hold the data the run trained on).")
@click.option("--probe-split", type=click.Path(path_type=Path),
              help="Indices of the probe's training samples (default: the recipe's eval.train_split).")
@click.option("--shots", type=shot_settings(), default="full", show_default=True,
              help="full (the probe list) and/or N-shot evaluations, each the mean and std over the recipe's "
                   "few-shot lists (eval.shot_lists), e.g. full,100,50.")
@click.option("--epochs", type=click.IntRange(min=1),
              help="BCL probe epochs (default: the recipe's, 500); fewer squeeze its lr decay, with a warning.")
@click.option("--sdclr-epochs", type=click.IntRange(min=1),
              help="SDCLR full-shot fc epochs (default: the recipe's, 30); fewer, with a warning.")
@click.option("--knn", type=positive_ints(), help="Comma-separated k values for kNN, e.g. 1,10; empty for none.")
@click.option("--random-init", is_flag=True, help="Also evaluate a randomly initialised backbone of the same architecture.")
@click.option("--protocol", type=click.Choice(PROTOCOL_CHOICES),
              help="bcl (default: the linear probe on cached features, with kNN), sdclr (the fc trained through the "
                   "frozen backbone on augmented images, best epoch on the held-out list), ts (kNN and LinearSVCs on "
                   "the long-tailed split), all (those three), supcon (SupCon's and SelfCon's linear classifiers on "
                   "augmented views), finetune (FlatCLR's: the whole network with a new fc) or lotar (LoTaR's fc); "
                   "the recipe's eval.protocol when not given.")
@click.option("--subnet/--no-subnet", default=None,
              help="supcon protocol on a multi-exit (SelfCon) encoder: also train a classifier on the sub-network "
                   "exit and report their ensemble (SelfCon's --subnet; default: the recipe's eval.supcon_subnet, on).")
@click.option("--exit", "exit_name", type=click.Choice(EVAL_EXITS),
              help="backbone, sub-network or ensemble: which exit of a multi-exit (SelfCon) encoder gives the features (default: the recipe's "
                   "eval.exit, backbone); ensemble concatenates both.")
@overwrite_option("reports of the same evaluation written before")
@click.option("--device", type=DeviceName(), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--precision", default="auto", show_default=True,
              help="Autocast of the backbone as it extracts features (and as the finetune protocol trains it): "
                   + PRECISION_CHOICES)
@user_errors
def linear_eval(target: Path, out: Path | None, store_path: Path | None, probe_split: Path | None,
                shots: tuple[str, ...], epochs: int | None, sdclr_epochs: int | None, knn: tuple[int, ...] | None,
                random_init: bool, protocol: str | None, subnet: bool | None, exit_name: str | None, overwrite: bool,
                device: str, precision: str) -> None:
    """The papers' evaluation protocols on a run folder or checkpoint, with many/medium/few groups."""
    from fastlt.evaluate.protocol import linear_eval as run_linear_eval
    from fastlt.hardware import resolve_device, resolve_precision
    from fastlt.train.distributed import launched_ranks

    if not launched_ranks().main:  # under torchrun, rank 0 evaluates and the others have nothing to do
        return

    resolved = resolve_device(device, f"--device {device}")
    given: dict[str, Any] = {"train_split": probe_split and str(probe_split.resolve()), "epochs": epochs,
                             "sdclr_epochs": sdclr_epochs, "knn": knn, "protocol": protocol, "exit": exit_name,
                             "supcon_subnet": subnet}
    overrides = {key: value for key, value in given.items() if value is not None}  # the eval.* keys given here
    result = run_linear_eval(target, out, resolved, store_path, overrides, random_init,
                             resolve_precision(precision, resolved, f"--precision {precision}").name, shots, overwrite)
    click.echo(result.markdown)
    for folder in result.folders.values():
        click.echo(f"wrote {folder}")


@click.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...", type=click.Path(path_type=Path))
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the table as CSV (full-precision numbers, few-shot std in its own column).")
@click.option("--md", "md_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the Markdown table to this file.")
@overwrite_option("existing --csv and --md files")
@user_errors
def compare(runs: tuple[Path, ...], csv_path: Path | None, md_path: Path | None, overwrite: bool) -> None:
    """Several runs' evaluation reports side by side, as one Markdown table on stdout.

    Each RUN is a run folder (every report folder in RUN/eval, one per kind of evaluation), a
    report folder or eval.json (that report), a folder of report folders (a linear-eval --out), or
    a folder of runs (each subfolder a run, e.g. runs/). A run without reports is left out, and
    one line on stderr says which and why; with no report at all, nothing is printed or written.
    One row per run and evaluation: method, pretraining split, epoch, protocol, full-shot overall,
    many / medium / few and group std, and an N-shot column (mean +- std over the subsets) where
    an N-shot report of the same checkpoint exists. Every report is read before anything is
    printed or written; files are replaced atomically.
    """
    from fastlt.evaluate.compare import compare_runs, write_comparison

    check_free([csv_path, md_path], overwrite)
    comparison = compare_runs(runs)
    if comparison.left_out_line():
        click.echo(comparison.left_out_line(), err=True)
    click.echo(comparison.markdown(), nl=False)
    for path in write_comparison(comparison, csv_path, md_path):
        click.echo(f"wrote {path}")


@click.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for the PNGs (created if missing).")
@overwrite_option("PNGs of the same names in --out")
@user_errors
def plot(runs: tuple[Path, ...], out: Path, overwrite: bool) -> None:
    """Training curves of one or several run folders over epochs, one line per run, as PNGs in OUT.

    loss.png (one panel per loss objective); knn.png (the kNN monitor's held-out accuracy, class
    mean / many / medium / few, where train.monitor_every logged it); temperature.png;
    bcl_weights.png (BCL's mean augmentation weight per group; BCL runs only). A plot no run has
    data for is skipped, and one line says which and why.
    """
    from fastlt.evaluate.plots import plot_runs

    result = plot_runs(runs, out, overwrite)
    for path in result.written:
        click.echo(f"wrote {path}")
    if result.skipped_line():
        click.echo(result.skipped_line())


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="File for the torchvision state dict, mean/std and provenance (torch.save, weights_only-safe).")
@overwrite_option("an existing --out file")
@user_errors
def export(target: Path, out: Path, overwrite: bool) -> None:
    """Write the pretrained backbone of a run folder or checkpoint as a torchvision ResNet state dict.

    Standard width (64) only; SDCLR's dense branch; load it with
    fastlt.evaluate.export.torchvision_resnet(arch, stem) and strict=True.
    """
    from fastlt.evaluate.export import export_torchvision

    exported = export_torchvision(target, out, overwrite)
    click.echo(f"wrote {out} ({exported['arch']}, {exported['stem']} stem, epoch {exported['fastlt']['epoch']})")


@click.command()
@click.argument("table", type=click.Choice(["cifar100", "cifar10", "imagenet100", "digits"]))
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path),
              help="The converted data set (fastlt convert).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Runs go to OUT/<dataset>_lt/runs, the table to OUT/<dataset>_lt.md.")
@click.option("--splits", "split_ids", type=positive_ints(), default="1", show_default=True,
              help="Published splits to run, e.g. 1,2,3,4,5 (mean and std over them).")
@click.option("--epochs", type=click.IntRange(min=1), help="Pretraining epochs (default: the recipes', the papers').")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a value in every run's recipe.")
@click.option("--precision", default="auto", show_default=True, help=PRECISION_HELP)
@engine_options
@user_errors
def reproduce(table: str, store_path: Path, out: Path, split_ids: tuple[int, ...], epochs: int | None,
              overrides: tuple[str, ...], precision: str, devices: str | None, per_device: int, jobs: int | None,
              slurm: str | None) -> None:
    """Pretrain and evaluate the presets of a published table, and write our numbers beside the paper's.

    The runs are a sweep (see `fastlt sweep`): on every GPU at once by default. Stopped and run again, it
    resumes: finished runs and reports are kept.
    """
    from fastlt.reproduce import reproduce as run_reproduction
    from fastlt.sweep import Engine

    engine = Engine.of(devices, jobs, per_device, slurm)
    click.echo(str(run_reproduction(table, store_path, out, split_ids, epochs, overrides, engine, precision)))
