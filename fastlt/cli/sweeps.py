"""`fastlt sweep`: many runs from one sweep file, on every device of this machine or as Slurm jobs, and their
table; `fastlt sweep --status` reads a sweep folder running elsewhere.

The sweep code is imported inside the command, so that `fastlt --help` answers without loading torch.
"""
from __future__ import annotations

from pathlib import Path

import click

from fastlt.cli.shared import engine_options, user_errors
from fastlt.errors import FastltError


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="The sweep folder (runs/, logs/, state/, table.md); default: sweeps/<the sweep file's name>.")
@click.option("--status", "show_status", is_flag=True,
              help="TARGET is a sweep folder: print where each of its runs stands, and exit.")
@engine_options
@user_errors
def sweep(target: Path, out: Path | None, show_status: bool, devices: str | None, per_device: int,
          jobs: int | None, slurm: str | None) -> None:
    """Pretrain and evaluate every run of a sweep file (recipes x [grid] x splits x seeds), then tabulate them.

    Run again, it skips finished runs, resumes stopped ones and starts the rest. One line per change of a
    run's state on stderr; the table's path last on stdout.
    """
    from fastlt.sweep import Engine, run_sweep
    from fastlt.sweep.state import status_report

    if show_status:
        click.echo(status_report(target))
        return
    if target.is_dir():
        raise FastltError(f"{target}: a folder; pass a sweep file (TOML), or --status to read a sweep folder")
    engine = Engine.of(devices, jobs, per_device, slurm)
    click.echo(str(run_sweep(target, out or Path("sweeps") / target.stem, engine).table))
