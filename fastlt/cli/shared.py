"""What the command modules share: how an error becomes one line and an exit status, and the option types,
help texts and --overwrite that several commands use alike."""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from fastlt.errors import FastltError, RunStopped, SecondSignal


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Report FastltError as one line and exit 1, and a run a signal stopped (its checkpoint saved, or a
    second signal that ended it at once) as one line and exit 128 + the signal, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FastltError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
        except (RunStopped, SecondSignal) as stop:
            if speaks_for_the_run():
                click.echo(str(stop), err=True)
            sys.exit(128 + stop.signum)

    return wrapper


def speaks_for_the_run() -> bool:
    """Whether this process prints a run's stop line: rank 0 under torchrun (every rank stops), else itself."""
    from fastlt.train.distributed import launched_ranks  # here, not above: it loads torch

    try:
        return launched_ranks().main
    except FastltError:
        return True


class CommaList(click.ParamType):
    """Comma-separated items, each kept if ``accept(item)``; an empty string is the empty list unless
    ``allow_empty`` is false. Items are returned as ``convert_item(item)``, repeats dropped."""

    name = "list"

    def __init__(self, accept: Callable[[str], bool], convert_item: Callable[[str], Any], expected: str,
                 allow_empty: bool = True):
        self.accept, self.convert_item, self.expected, self.allow_empty = accept, convert_item, expected, allow_empty

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[Any, ...]:
        if isinstance(value, tuple):
            return value
        items = [item.strip() for item in str(value).split(",") if item.strip()]
        if (not items and not self.allow_empty) or not all(self.accept(item) for item in items):
            self.fail(f"{value!r}: expected {self.expected}", param, ctx)
        return tuple(dict.fromkeys(self.convert_item(item) for item in items))


def positive_ints() -> CommaList:
    """Integers >= 1, e.g. "1,10"."""
    return CommaList(lambda item: item.isdigit() and int(item) >= 1, int,
                     "comma-separated integers >= 1, e.g. 1,10")


class DeviceName(click.ParamType):
    """auto, cpu, cuda or cuda:N; anything else is a usage error. Whether CUDA is there is checked where the
    command resolves the device (fastlt.hardware.resolve_device), as an error naming ``--device``."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        kind, colon, index = str(value).partition(":")
        if (kind in ("auto", "cpu", "cuda") and not colon) or (kind == "cuda" and index.isdigit()):
            return str(value)
        self.fail(f"{value!r}: expected auto, cpu, cuda or cuda:N", param, ctx)


DEVICE_HELP = "auto (the first CUDA device, else the CPU), cpu, cuda or cuda:N."
PRECISION_CHOICES = "auto (bf16 where the device runs it natively, else fp16 on CUDA, else fp32), bf16, fp16 or fp32."
PRECISION_HELP = PRECISION_CHOICES + " fp16 training scales the loss."


def engine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--devices, --per-device, --jobs and --slurm: where the runs of a sweep (or a reproduction) go."""
    options = [
        click.option("--devices", metavar="auto|cpu|cuda:0,cuda:1,...",
                     help="GPUs to run on, one run per GPU at a time (auto: every visible one; on a machine "
                          "without CUDA, the CPU).  [default: auto]"),
        click.option("--per-device", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Runs at once on each GPU (small runs that leave a large GPU idle)."),
        click.option("--jobs", type=click.IntRange(min=1),
                     help="On the CPU: runs at once, the cores divided between them (default 1)."),
        click.option("--slurm", metavar="partition=P,gpus=G,time=MIN,...",
                     help="Submit each run as a Slurm job through submitit (a job array; multi-GPU runs under "
                          "torchrun; requeued runs resume); other keys go to Slurm as slurm_<key>; "
                          "cluster=local runs the jobs here."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def overwrite_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--overwrite, alike on every command that writes a path the user named: without it, an existing one is
    refused before any work (fastlt.files.check_free)."""
    return click.option("--overwrite", is_flag=True, help=f"Replace {what}; without it an existing one is refused.")


class OneLineErrors(click.Group):
    """Report a bad command line as one ``error:`` line too (click would print the usage first)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:  # a bare group: its help, as click would
            click.echo(error.format_message(), err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            click.echo(f"error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        if standalone_mode:
            sys.exit(result if isinstance(result, int) else 0)
        return result
