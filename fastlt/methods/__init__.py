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
from fastlt.methods.selfcon import SelfCon
from fastlt.methods.simclr import SimCLR
from fastlt.models.heads import lotar_head, mlp_head, projector
from fastlt.models.multi_exit import MultiExitEncoder
from fastlt.models.resnet import build_resnet
from fastlt.models.self_damaging import (
    BranchSwitch,
    dual_norm_factory,
    masked_conv_factory,
)
from fastlt.objectives import OBJECTIVES, load_objective_plugins
from fastlt.recipe import Recipe

__all__ = ["Axes", "ContrastiveMethod", "INCOMPATIBLE", "PRESETS", "StepContext", "StepOutput", "VIEW_FORWARD_CONFLICTS",
           "axis_choices", "build_method", "build_views", "resolve_axes"]


@dataclass(frozen=True)
class Axes:
    """One choice per axis; a preset is a named Axes."""

    encoder: str = "plain"
    view_strength: str = "fixed"
    objective: str = "infonce"
    temperature_schedule: str = "constant"
    sample_weights: str = "none"


def axis_choices() -> dict[str, tuple[str, ...]]:
    """The choices on every axis; the objectives include those registered by other packages."""
    load_objective_plugins()
    return {
        "encoder": ("plain", "self-damaging", "multi-exit", "multi-exit-multiview"),
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
    "flatclr": Axes(objective="flatnce"),
    "supcon": Axes(objective="supcon"),
    "selfcon": Axes(encoder="multi-exit", objective="supcon"),
    "selfcon-su": Axes(encoder="multi-exit", objective="supcon-unsupervised"),
    "selfcon-m": Axes(encoder="multi-exit-multiview", objective="supcon"),
    "selfcon-mu": Axes(encoder="multi-exit-multiview", objective="supcon-unsupervised"),
}

# Choices that exist on their axes but cannot meet: (axis, choice, axis, choice, why).
INCOMPATIBLE = (
    ("encoder", "multi-exit", "sample_weights", "lotar",
     "LoTaR weights a sample by the distance between its two augmented views, and a multi-exit encoder sees one view"),
    ("encoder", "multi-exit", "view_strength", "bcl-d",
     "BCL-D draws one uniform U per sample shared by its two augmented views, and a multi-exit encoder sees one view"),
    ("encoder", "multi-exit-multiview", "sample_weights", "lotar",
     "LoTaR weights a sample by the distance between its two views' embeddings, and SelfCon-M's loss pairs the "
     "exits of each view"),
)


# method.view_forward values an encoder cannot take: (encoder, value) -> why.
VIEW_FORWARD_CONFLICTS = {
    ("self-damaging", "joint"): "its views go through different branches (view 1 dense, view 2 pruned), one forward "
                                "each; leave it empty",
    ("multi-exit", "joint"): "a multi-exit encoder sees one view; leave it empty",
    ("multi-exit", "separate"): "a multi-exit encoder sees one view; leave it empty",
    ("multi-exit-multiview", "separate"): "SelfCon-M forwards its two views as one batch (SelfCon's "
                                          "main_represent.py:344); leave it empty",
}


def resolve_axes(recipe: Recipe) -> Axes:
    """The recipe's choice on every axis: the preset's, changed where ``method.<axis>`` says so."""
    config, choices = recipe.method, axis_choices()
    if config.name not in PRESETS:
        raise FastltError(f"method.name: unknown method {config.name!r} (expected one of {sorted(PRESETS)})")
    chosen = {axis: getattr(config, axis) or getattr(PRESETS[config.name], axis) for axis in choices}
    for axis, choice in chosen.items():
        if choice not in choices[axis]:
            raise FastltError(f"method.{axis}: unknown {choice!r} (expected one of {list(choices[axis])})")
    for axis_a, choice_a, axis_b, choice_b, why in INCOMPATIBLE:
        if chosen[axis_a] == choice_a and chosen[axis_b] == choice_b:
            raise FastltError(f"method: {axis_a} {choice_a!r} cannot be combined with {axis_b} {choice_b!r}: {why}")
    why = VIEW_FORWARD_CONFLICTS.get((chosen["encoder"], config.view_forward))
    if why:
        raise FastltError(f"method.view_forward: {config.view_forward!r} does not apply to the {chosen['encoder']} "
                          f"encoder: {why}")
    return dataclasses.replace(PRESETS[config.name], **chosen)


def build_views(recipe: Recipe, boost: MemorisationBoost | None = None) -> SimCLRViews:
    """The SimCLR view pipeline of the recipe's [views] table, with the boost's RandAugment stage if any."""
    return SimCLRViews(recipe.views, extra=boost.stage if boost is not None else None)


def build_head(recipe: Recipe, in_dim: int) -> nn.Module:
    """The recipe's head: SimCLR's batch-normed projector, SupCon's plain MLP or LoTaR's fc + MLP."""
    m = recipe.model
    if m.head == "lotar":
        return lotar_head(in_dim, m.fc_dim, m.projector_hidden, m.projector_out, m.projector_layers)
    make = projector if m.head == "projector" else mlp_head
    return make(in_dim, m.projector_hidden, m.projector_out, m.projector_layers)


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
                               axes.sample_weights, c.lotar_sign, c.contrast_mode)
    if axes.encoder == "plain":
        backbone = build_resnet(m.arch, stem=m.stem, width=m.width)
        return SimCLR(views, backbone, build_head(recipe, backbone.feature_dim), contrast, boost,
                      separate_views=c.view_forward == "separate")
    if axes.encoder in ("multi-exit", "multi-exit-multiview"):
        encoder = MultiExitEncoder(build_resnet(m.arch, stem=m.stem, width=m.width), m.exit_after, m.subnetwork)
        return SelfCon(views, encoder, build_head(recipe, encoder.feature_dim), build_head(recipe, encoder.feature_dim),
                       contrast, boost, multiview=axes.encoder == "multi-exit-multiview")
    if m.head != "projector":
        raise FastltError("model.head: the self-damaging encoder needs 'projector' (its batch norms are doubled "
                          f"per branch), got {m.head!r}")
    switch = BranchSwitch()
    backbone = build_resnet(
        m.arch, stem=m.stem, width=m.width,
        conv=masked_conv_factory(switch), norm=dual_norm_factory(nn.BatchNorm2d, switch),
    )
    head = projector(
        backbone.feature_dim, m.projector_hidden, m.projector_out, m.projector_layers,
        norm=dual_norm_factory(nn.BatchNorm1d, switch),
    )
    return SDCLR(views, backbone, head, switch, contrast, c.pruning_ratio, boost, c.sdclr_forwards)
