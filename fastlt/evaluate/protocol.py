"""Linear evaluation of a pretraining run: frozen features once, a linear probe and kNN, a report.

The backbone is rebuilt from the recipe stored in the checkpoint and loaded strictly, so
a checkpoint only ever evaluates with the architecture that produced it. Class groups
(many / medium / few) come from the per-class counts of the pretraining split.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastlt.data.splits import class_counts, class_groups, split_or_all
from fastlt.data.store import NativeStore, check_same_data, split_checksum
from fastlt.errors import FastltError
from fastlt.evaluate.features import extract_features
from fastlt.evaluate.knn import knn_predict
from fastlt.evaluate.linear import LinearProbeConfig, predict_linear, train_linear_probe
from fastlt.evaluate.report import accuracy_report, markdown_table, write_report
from fastlt.methods import build_method
from fastlt.recipe import Recipe, recipe_from_dict
from fastlt.train.checkpoint import load_checkpoint, load_model_state

CHECKPOINT_IN_RUN = Path("checkpoints/last.pt")


@dataclass(frozen=True)
class EvalResult:
    """Rows of the report (name -> accuracy report) and where it was written."""

    reports: dict[str, dict[str, Any]]
    json_path: Path
    markdown_path: Path
    markdown: str


def resolve_checkpoint(target: Path) -> Path:
    """A run folder means its last checkpoint; a file is taken as it is."""
    if target.is_dir():
        return target / CHECKPOINT_IN_RUN
    return target


def pretrained_backbone(payload: dict[str, Any], recipe: Recipe, num_samples: int, checkpoint: Path) -> nn.Module:
    """Rebuild the method the checkpoint's recipe names, load its weights strictly, keep the backbone."""
    method = build_method(recipe, num_samples=num_samples)
    load_model_state(method, payload["model"], checkpoint)
    return method.feature_extractor()


def random_backbone(recipe: Recipe, num_samples: int, seed: int) -> nn.Module:
    """The same architecture with a fresh seeded initialisation: the baseline pretraining must beat."""
    torch.manual_seed(seed)
    return build_method(recipe, num_samples=num_samples).feature_extractor()


def linear_eval(
    target: Path,
    out_dir: Path | None = None,
    device: torch.device | str = "cpu",
    store_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    random_init: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> EvalResult:
    """Evaluate a run folder or checkpoint with its recipe's [eval] protocol; write eval.json and eval.md.

    overrides replace [eval] settings (e.g. {"epochs": 100}); store_path replaces the
    data store recorded in the recipe (for a run trained on another machine).
    """
    checkpoint = resolve_checkpoint(target)
    payload = load_checkpoint(checkpoint)
    recipe = recipe_from_dict(payload["recipe"], source=f"{checkpoint} (recipe)")
    unknown = sorted(set(overrides or {}) - {f.name for f in dataclasses.fields(recipe.eval)})
    if unknown:
        raise FastltError(f"linear-eval: unknown eval setting {unknown[0]!r}")
    settings = dataclasses.replace(recipe.eval, **(overrides or {}))
    device = torch.device(device)
    store = NativeStore.open(store_path or Path(recipe.data.store))
    where = f"{checkpoint}: store {store.path}"
    check_same_data(payload["data"], store.identity(recipe.data.part), where)
    train_part = store.part(recipe.data.part)
    num_samples = len(train_part.labels)
    pretrain_indices = split_or_all(recipe.data.split, num_samples)
    check_same_data(payload["data"], {"split_sha256": split_checksum(pretrain_indices)}, f"{checkpoint}: data.split")
    probe_indices = np.sort(split_or_all(settings.train_split, num_samples))
    too_large = [k for k in settings.knn if k > len(probe_indices)]
    if too_large:
        raise FastltError(f"knn k = {too_large[0]}: larger than the {len(probe_indices)} samples of the probe set")
    backbone = pretrained_backbone(payload, recipe, num_samples, checkpoint)
    test_part = store.part(settings.test_part)
    groups = class_groups(class_counts(pretrain_indices, train_part.labels, store.num_classes), settings.groups)
    probe_config = LinearProbeConfig(
        epochs=settings.epochs, lr=settings.lr, final_lr=settings.final_lr,
        weight_decay=settings.weight_decay, batch_size=settings.batch_size, seed=recipe.train.seed,
    )
    train_images = np.ascontiguousarray(train_part.images[probe_indices])
    train_labels = torch.as_tensor(train_part.labels[probe_indices], device=device)
    test_labels = torch.as_tensor(np.asarray(test_part.labels), device=device)

    backbones = {"": backbone}
    if random_init:
        backbones["random-init "] = random_backbone(recipe, num_samples, seed=recipe.train.seed)
    reports: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    for prefix, module in backbones.items():
        started = time.perf_counter()
        module = module.to(device, memory_format=torch.channels_last).eval()
        train_features = extract_features(module, train_images, device, autocast_dtype=autocast_dtype)
        test_features = extract_features(module, np.asarray(test_part.images), device, autocast_dtype=autocast_dtype)
        probe = train_linear_probe(train_features, train_labels, store.num_classes, probe_config)
        predictions = predict_linear(probe, test_features)
        reports[f"{prefix}linear"] = accuracy_report(predictions, test_labels, store.num_classes, groups)
        for k in settings.knn:
            knn = knn_predict(train_features, train_labels, test_features, k, store.num_classes)
            reports[f"{prefix}knn@{k}"] = accuracy_report(knn, test_labels, store.num_classes, groups)
        timings[f"{prefix or 'pretrained '}seconds"] = round(time.perf_counter() - started, 2)

    out_dir = out_dir or (checkpoint.parent.parent / "eval" if target.is_dir() else checkpoint.parent / "eval")
    extra = {
        "checkpoint": str(checkpoint),
        "store": str(store.path),
        "probe_train_samples": int(len(probe_indices)),
        "test_samples": int(len(test_part.labels)),
        "protocol": {"linear": vars(probe_config), "knn": list(settings.knn), "groups": settings.groups},
        "groups": {name: ids.tolist() for name, ids in groups.items()},
        "timings": timings,
    }
    json_path, markdown_path = write_report(out_dir, reports, extra)
    return EvalResult(reports, json_path, markdown_path, markdown_table(reports))
