"""Contrastive objectives: they see embeddings, a temperature and the batch's labels, never data.

Each objective maps two views' embeddings [B, D] (or a single view's two exits) to
per-anchor losses [2B] in float32, anchors ordered [z1; z2], so sample weights and BCL's
per-sample memory work with every one of them. Objectives that need no labels ignore them.
An objective may also take a keyword ``anchors`` (row indices into [z1; z2]) and return only
those anchors' losses: each process of a several-process run then computes its own anchors'
rows against the gathered batch. One without it computes every row and is sliced: correct,
only not faster.

fastlt's own objectives are one file each plus one line in OBJECTIVES. Other packages add
theirs with ``@register_objective("name")`` or an entry point in the ``fastlt.objectives``
group; ``method.objective = "name"`` then picks it like a built-in one.
"""
from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable

from torch import Tensor

from fastlt.errors import FastltError
from fastlt.objectives.flatnce import flat_nce_per_anchor
from fastlt.objectives.infonce import info_nce_per_anchor
from fastlt.objectives.supcon import supcon_per_anchor, unsupervised_supcon_per_anchor

Objective = Callable[[Tensor, Tensor, "float | Tensor", "Tensor | None"], Tensor]

OBJECTIVES: dict[str, Objective] = {
    "infonce": info_nce_per_anchor,
    "flatnce": flat_nce_per_anchor,
    "supcon": supcon_per_anchor,
    "supcon-unsupervised": unsupervised_supcon_per_anchor,
}

# Objectives that never read the labels: several processes gather the labels only for the others.
LABEL_FREE: frozenset[Objective] = frozenset({info_nce_per_anchor, flat_nce_per_anchor, unsupervised_supcon_per_anchor})

PLUGIN_GROUP = "fastlt.objectives"


def takes_anchors(objective: Objective) -> bool:
    """Whether ``objective`` computes only the rows it is given as ``anchors`` (see the module's docstring)."""
    try:
        return "anchors" in inspect.signature(objective).parameters
    except (TypeError, ValueError):  # a callable without a readable signature: computed in full, then sliced
        return False


def register_objective(name: str) -> Callable[[Objective], Objective]:
    """Decorator: make the function the objective that ``method.objective = name`` picks."""

    def register(objective: Objective) -> Objective:
        if name in OBJECTIVES and OBJECTIVES[name] is not objective:
            raise FastltError(f"objective {name!r}: a different objective is registered under this name already")
        OBJECTIVES[name] = objective
        return objective

    return register


def load_objective_plugins() -> None:
    """Register the objectives installed packages declare in the ``fastlt.objectives`` entry-point group."""
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        if entry.name not in OBJECTIVES:
            try:
                OBJECTIVES[entry.name] = entry.load()
            except Exception as error:  # a broken plugin is named, not a traceback from deep inside fastlt
                raise FastltError(f"objective plugin {entry.name!r} ({entry.value}): cannot load it ({error})") from None
