"""The fastlt command line: the root group ``main`` and its commands, one module per thing a user does.

data.py: convert, splits. training.py: pretrain, recipe. sweeps.py: sweep. evaluation.py: linear-eval, compare, plot, export,
reproduce. tools.py: bench, info. shared.py: the error handling and the options they share.
Every command turns a FastltError into ``error: <one line>`` on stderr and exit status 1,
and a malformed command line into one such line and exit status 2.
Commands import what they run inside themselves, so that ``fastlt --help`` and a usage error answer
without loading torch.
"""
from __future__ import annotations

import click

from fastlt.cli import data, evaluation, sweeps, tools, training
from fastlt.cli.shared import OneLineErrors


@click.group(cls=OneLineErrors, commands=[
    data.convert, data.splits,
    training.pretrain, training.recipe_group, sweeps.sweep,
    evaluation.linear_eval, evaluation.compare, evaluation.plot, evaluation.export, evaluation.reproduce,
    tools.bench, tools.info,
])
@click.version_option(package_name="fastlt")
def main() -> None:
    """Fast contrastive self-supervised learning on long-tailed image data."""
