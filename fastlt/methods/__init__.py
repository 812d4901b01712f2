"""Method presets: one choice per axis (encoder, view strength, objective, temperature, sample weights).

``build_method`` is the registry: ``method.name`` picks a preset, and any ``method.<axis>``
key changes that axis, so every combination runs, not only the published ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor, nn

from fastlt.augment.views import SimCLRViews
from fastlt.errors import FastltError
from fastlt.methods.base import ContrastiveMethod, StepContext, StepOutput
from fastlt.methods.boost import MAPPINGS, MemorisationBoost
from fastlt.methods.contrast import SAMPLE_WEIGHTS, TEMPERATURE_SCHEDULES, ContrastiveLoss
from fastlt.methods.sdclr import SDCLR
from fastlt.methods.simclr import SimCLR
from fastlt.models.heads import projector
from fastlt.models.resnet import build_resnet
from fastlt.models.self_damaging import (
    BranchSwitch,
    dual_norm_factory,
    masked_conv_factory,
)
from fastlt.objectives import OBJECTIVES
from fastlt.recipe import Recipe

__all__ = ["AXES", "Axes", "ContrastiveMethod", "StepContext", "StepOutput", "PRESETS", "build_method",
           "build_views", "resolve_axes"]


@dataclass(frozen=True)
class Axes:
    """One choice per axis; a preset is a named Axes."""

    encoder: str = "plain"
    view_strength: str = "fixed"
    objective: str = "infonce"
    temperature_schedule: str = "constant"
    sample_weights: str = "none"


AXES: dict[str, tuple[str, ...]] = {
    "encoder": ("plain", "self-damaging"),
    "view_strength": ("fixed", *MAPPINGS),
    "objective": tuple(OBJECTIVES),
    "temperature_schedule": TEMPERATURE_SCHEDULES,
    "sample_weights": SAMPLE_WEIGHTS,
}

PRESETS: dict[str, Axes] = {
    "simclr": Axes(),
    "sdclr": Axes(encoder="self-damaging"),
    "bcl-i": Axes(view_strength="bcl-i"),
    "bcl-d": Axes(encoder="self-damaging", view_strength="bcl-d"),
    "simclr-ts": Axes(temperature_schedule="cosine"),
    "sdclr-ts": Axes(encoder="self-damaging", temperature_schedule="cosine"),
    "bcl-d-ts": Axes(encoder="self-damaging", view_strength="bcl-d", temperature_schedule="cosine"),
    "lotar": Axes(sample_weights="lotar"),
}


def resolve_axes(recipe: Recipe) -> Axes:
    """The recipe's choice on every axis: the preset's, changed where ``method.<axis>`` says so."""
    config = recipe.method
    if config.name not in PRESETS:
        raise FastltError(f"method.name: unknown method {config.name!r} (expected one of {sorted(PRESETS)})")
    chosen = {axis: getattr(config, axis) or getattr(PRESETS[config.name], axis) for axis in AXES}
    for axis, choice in chosen.items():
        if choice not in AXES[axis]:
            raise FastltError(f"method.{axis}: unknown {choice!r} (expected one of {list(AXES[axis])})")
    return dataclasses.replace(PRESETS[config.name], **chosen)


def build_views(recipe: Recipe, boost: MemorisationBoost | None = None) -> SimCLRViews:
    """The SimCLR view pipeline of the recipe's [views] table, with the boost's RandAugment stage if any."""
    return SimCLRViews(recipe.views, extra=boost.stage if boost is not None else None)


def build_method(recipe: Recipe, num_samples: int, sample_groups: Tensor | None = None) -> ContrastiveMethod:
    """Build the recipe's method.

    num_samples sizes per-sample state (the boost memory is indexed by store index);
    sample_groups ([num_samples] int, 0/1/2 = many/medium/few, -1 = not in the split) only
    feeds the boost's per-group weight diagnostics.
    """
    axes, m, c = resolve_axes(recipe), recipe.model, recipe.method
    boost = None
    if axes.view_strength != "fixed":
        boost = MemorisationBoost(num_samples, axes.view_strength, c.boost_momentum, sample_groups)
    views = build_views(recipe, boost)
    contrast = ContrastiveLoss(axes.objective, c.temperature, axes.temperature_schedule,
                               (c.temperature_min, c.temperature_max, c.temperature_period),
                               axes.sample_weights, c.lotar_sign)
    if axes.encoder == "plain":
        backbone = build_resnet(m.arch, stem=m.stem, width=m.width)
        head = projector(backbone.feature_dim, m.projector_hidden, m.projector_out, m.projector_layers)
        return SimCLR(views, backbone, head, contrast, boost)
    switch = BranchSwitch()
    backbone = build_resnet(
        m.arch, stem=m.stem, width=m.width,
        conv=masked_conv_factory(switch), norm=dual_norm_factory(nn.BatchNorm2d, switch),
    )
    head = projector(
        backbone.feature_dim, m.projector_hidden, m.projector_out, m.projector_layers,
        norm=dual_norm_factory(nn.BatchNorm1d, switch),
    )
    return SDCLR(views, backbone, head, switch, contrast, c.pruning_ratio, boost)
