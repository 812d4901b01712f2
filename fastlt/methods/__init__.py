"""Method presets: choices on the encoder and view-strength axes, wired to an objective.

``build_method`` is the registry: ``method.name`` picks a preset, ``method.encoder`` and
``method.view_strength`` may change either axis.
"""
from __future__ import annotations

from torch import Tensor, nn

from fastlt.augment.views import SimCLRViews
from fastlt.errors import FastltError
from fastlt.methods.base import ContrastiveMethod, StepContext, StepOutput
from fastlt.methods.boost import MAPPINGS, MemorisationBoost
from fastlt.methods.sdclr import SDCLR
from fastlt.methods.simclr import SimCLR
from fastlt.models.heads import projector
from fastlt.models.resnet import build_resnet
from fastlt.models.self_damaging import (
    BranchSwitch,
    dual_norm_factory,
    masked_conv_factory,
)
from fastlt.recipe import Recipe

__all__ = ["ContrastiveMethod", "StepContext", "StepOutput", "PRESETS", "build_method", "build_views", "resolve_axes"]

# preset name -> (encoder, view strength)
PRESETS: dict[str, tuple[str, str]] = {
    "simclr": ("plain", "fixed"),
    "sdclr": ("self-damaging", "fixed"),
    "bcl-i": ("plain", "bcl-i"),
    "bcl-d": ("self-damaging", "bcl-d"),
}
ENCODERS = ("plain", "self-damaging")
VIEW_STRENGTHS = ("fixed", *MAPPINGS)


def resolve_axes(recipe: Recipe) -> tuple[str, str]:
    """(encoder, view strength) of the recipe: the preset's, changed where the recipe says so."""
    config = recipe.method
    if config.name not in PRESETS:
        raise FastltError(f"method.name: unknown method {config.name!r} (expected one of {sorted(PRESETS)})")
    encoder, strength = PRESETS[config.name]
    encoder = config.encoder or encoder
    strength = config.view_strength or strength
    if encoder not in ENCODERS:
        raise FastltError(f"method.encoder: unknown encoder {encoder!r} (expected one of {list(ENCODERS)})")
    if strength not in VIEW_STRENGTHS:
        raise FastltError(f"method.view_strength: unknown {strength!r} (expected one of {list(VIEW_STRENGTHS)})")
    if not 0.0 <= config.pruning_ratio < 1.0:
        raise FastltError(f"method.pruning_ratio: must be in [0, 1), got {config.pruning_ratio}")
    if not 0.0 <= config.boost_momentum < 1.0:
        raise FastltError(f"method.boost_momentum: must be in [0, 1), got {config.boost_momentum}")
    return encoder, strength


def build_views(recipe: Recipe, boost: MemorisationBoost | None = None) -> SimCLRViews:
    """The SimCLR view pipeline of the recipe's [views] table, with the boost's RandAugment stage if any."""
    return SimCLRViews(recipe.views, extra=boost.stage if boost is not None else None)


def build_method(recipe: Recipe, num_samples: int, sample_groups: Tensor | None = None) -> ContrastiveMethod:
    """Build the recipe's method.

    num_samples sizes per-sample state (the boost memory is indexed by store index);
    sample_groups ([num_samples] int, 0/1/2 = many/medium/few, -1 = not in the split) only
    feeds the boost's per-group weight diagnostics.
    """
    encoder, strength = resolve_axes(recipe)
    m = recipe.model
    boost = None
    if strength != "fixed":
        boost = MemorisationBoost(num_samples, strength, recipe.method.boost_momentum, sample_groups)
    views = build_views(recipe, boost)
    if encoder == "plain":
        backbone = build_resnet(m.arch, stem=m.stem, width=m.width)
        head = projector(backbone.feature_dim, m.projector_hidden, m.projector_out, m.projector_layers)
        return SimCLR(views, backbone, head, recipe.method.temperature, boost)
    switch = BranchSwitch()
    backbone = build_resnet(
        m.arch, stem=m.stem, width=m.width,
        conv=masked_conv_factory(switch), norm=dual_norm_factory(nn.BatchNorm2d, switch),
    )
    head = projector(
        backbone.feature_dim, m.projector_hidden, m.projector_out, m.projector_layers,
        norm=dual_norm_factory(nn.BatchNorm1d, switch),
    )
    return SDCLR(views, backbone, head, switch, recipe.method.temperature, recipe.method.pruning_ratio, boost)
