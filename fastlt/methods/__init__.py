"""Method presets: each wires an encoder, an objective and a view pipeline together.

``build_method`` is the registry: a recipe's ``method.name`` picks the builder.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from fastlt.augment.views import SimCLRViews, ViewConfig
from fastlt.errors import FastltError
from fastlt.methods.base import ContrastiveMethod, StepContext, StepOutput
from fastlt.methods.simclr import SimCLR
from fastlt.models.heads import projector
from fastlt.models.resnet import build_resnet
from fastlt.recipe import Recipe

__all__ = ["ContrastiveMethod", "StepContext", "StepOutput", "build_method", "build_views", "METHODS"]


def build_views(recipe: Recipe) -> SimCLRViews:
    """The SimCLR view pipeline described by the recipe's [views] table."""
    v = recipe.views
    return SimCLRViews(
        ViewConfig(
            size=v.size,
            scale=v.scale,
            ratio=v.ratio,
            interpolation=v.interpolation,
            flip_p=v.flip_p,
            jitter=v.jitter,
            jitter_p=v.jitter_p,
            grayscale_p=v.grayscale_p,
            blur_p=v.blur_p,
            blur_sigma=v.blur_sigma,
        )
    )


def _build_simclr(recipe: Recipe, num_samples: int) -> ContrastiveMethod:
    m = recipe.model
    backbone = build_resnet(m.arch, stem=m.stem, width=m.width)
    head = projector(backbone.feature_dim, m.projector_hidden, m.projector_out, m.projector_layers)
    return SimCLR(build_views(recipe), backbone, head, recipe.method.temperature)


METHODS: dict[str, Callable[[Recipe, int], ContrastiveMethod]] = {
    "simclr": _build_simclr,
}


def build_method(recipe: Recipe, num_samples: int) -> ContrastiveMethod:
    """Build the method a recipe names; num_samples sizes per-sample state (BCL's memory)."""
    name = recipe.method.name
    if name not in METHODS:
        raise FastltError(f"method.name: unknown method {name!r} (expected one of {sorted(METHODS)})")
    return METHODS[name](recipe, num_samples)


def build_backbone(recipe: Recipe) -> nn.Module:
    """The backbone alone, as the recipe describes it (for evaluating a checkpoint)."""
    return build_method(recipe, num_samples=1).feature_extractor()
