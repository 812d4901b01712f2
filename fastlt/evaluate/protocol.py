"""Linear evaluation of a pretraining run: frozen features once, BCL's linear probe and kNN, reports.

The backbone is rebuilt from the recipe stored in the checkpoint and loaded strictly, so
a checkpoint only ever evaluates with the architecture that produced it. Class groups
(many / medium / few) come from the per-class counts of the pretraining split. Each
evaluation ("full" on the probe list, or N-shot over the few-shot subsets) writes its own
report folder, ``RUN/eval/<protocol>-<probe list>/``, that names what it measured.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fastlt.data.splits import class_counts, class_groups, load_split, split_checksum, split_or_all
from fastlt.data.store import NativeStore, check_same_data
from fastlt.errors import FastltError
from fastlt.evaluate.features import extract_features
from fastlt.evaluate.knn import knn_predict
from fastlt.evaluate.linear import LinearProbeConfig, predict_linear, train_linear_probe
from fastlt.evaluate.report import (
    accuracy_report,
    check_report_free,
    markdown_table,
    summarise_subsets,
    write_report,
)
from fastlt.files import file_digest
from fastlt.methods import build_method
from fastlt.recipe import EvalConfig, Recipe, recipe_from_dict
from fastlt.train.checkpoint import load_checkpoint, load_model_state
from fastlt.train.device import PRECISION_TYPES

CHECKPOINT_IN_RUN = Path("checkpoints/last.pt")
PROTOCOL = "bcl-linear"  # BCL's linear probe on frozen features, with kNN beside it
FULL = "full"


@dataclass(frozen=True)
class ProbeList:
    """One probe training list: its file ("" = the whole train part) and its sample indices (sorted)."""

    file: str
    indices: np.ndarray

    def record(self) -> dict[str, Any]:
        return {"file": self.file or "(the whole train part)", "sha256": split_checksum(self.indices),
                "samples": int(len(self.indices))}


@dataclass(frozen=True)
class Evaluation:
    """What one report measures: full-shot on one list, or N-shot over several subsets."""

    shots: str  # "full" or e.g. "100"
    probe_lists: list[ProbeList]
    folder: Path


@dataclass(frozen=True)
class EvalResult:
    """Rows of each evaluation's report (shots -> row name -> accuracy report) and where they were written."""

    reports: dict[str, dict[str, dict[str, Any]]]
    folders: dict[str, Path]
    markdown: str


def resolve_checkpoint(target: Path) -> Path:
    """A run folder means its last checkpoint; a file is taken as it is."""
    if target.is_dir():
        return target / CHECKPOINT_IN_RUN
    return target


def run_folder_of(checkpoint: Path) -> Path:
    """The run a checkpoint belongs to (``RUN/checkpoints/x.pt``), else the checkpoint's own folder."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_IN_RUN.parent.name else checkpoint.parent


def pretrained_backbone(payload: dict[str, Any], recipe: Recipe, num_samples: int, checkpoint: Path,
                        exit: str = "backbone") -> nn.Module:
    """Rebuild the method the checkpoint's recipe names, load its weights strictly, keep the chosen exit."""
    method = build_method(recipe, num_samples=num_samples)
    load_model_state(method, payload["model"], checkpoint)
    return method.feature_extractor(exit)


def random_backbone(recipe: Recipe, num_samples: int, seed: int, exit: str = "backbone") -> nn.Module:
    """The same architecture with a fresh seeded initialisation: the baseline pretraining must beat."""
    torch.manual_seed(seed)
    return build_method(recipe, num_samples=num_samples).feature_extractor(exit)


def few_shot_lists(settings: EvalConfig, shots: str, num_samples: int) -> list[ProbeList]:
    """The ``eval.shot_subsets`` N-shot lists named by the ``eval.shot_lists`` pattern, each validated."""
    if not settings.shot_lists:
        raise FastltError(f"--shots {shots}: the recipe names no few-shot lists (eval.shot_lists)")
    files = [settings.shot_lists.format(shots=shots, subset=subset) for subset in range(1, settings.shot_subsets + 1)]
    return [ProbeList(file, np.sort(load_split(Path(file), num_samples))) for file in files]


def plan_evaluations(settings: EvalConfig, shots: tuple[str, ...], num_samples: int, reports_dir: Path,
                     suffix: str) -> list[Evaluation]:
    """One Evaluation per requested shot setting, with its probe lists loaded and its report folder named."""
    plans = []
    for shot in shots:
        if shot == FULL:
            probe = ProbeList(settings.train_split, np.sort(split_or_all(settings.train_split, num_samples)))
            name = Path(settings.train_split).stem if settings.train_split else "all-train"
            plans.append(Evaluation(FULL, [probe], reports_dir / f"{PROTOCOL}-{name}{suffix}"))
        else:
            lists = few_shot_lists(settings, shot, num_samples)
            plans.append(Evaluation(shot, lists, reports_dir / f"{PROTOCOL}-{shot}shot{suffix}"))
    return plans


def linear_eval(
    target: Path,
    out_dir: Path | None = None,
    device: torch.device | str = "cpu",
    store_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    random_init: bool = False,
    precision: str = "fp32",
    shots: tuple[str, ...] = (FULL,),
    overwrite: bool = False,
) -> EvalResult:
    """Evaluate a run folder or checkpoint with its recipe's [eval] protocol; one report folder per shot setting.

    overrides replace [eval] settings (e.g. {"epochs": 100}); store_path replaces the data
    store recorded in the recipe (for a run trained on another machine); shots holds "full"
    and/or numbers of shots (few-shot lists from ``eval.shot_lists``); precision ("fp32",
    "bf16", "fp16") is the autocast of feature extraction. Every input is checked, and every
    report folder is free (or ``overwrite``), before any feature is extracted.
    """
    checkpoint = resolve_checkpoint(target)
    payload = load_checkpoint(checkpoint)
    raw = {**payload["recipe"], "eval": {**payload["recipe"].get("eval", {}), **(overrides or {})}}
    recipe = recipe_from_dict(raw, source=f"{checkpoint} (recipe)",
                              origins={("eval", key): "linear-eval" for key in overrides or {}})
    settings = recipe.eval
    device = torch.device(device)
    store = NativeStore.open(store_path or Path(recipe.data.store))
    check_same_data(payload["data"], store.identity(recipe.data.part), f"{checkpoint}: store {store.path}")
    train_part = store.part(recipe.data.part)
    num_samples = len(train_part.labels)
    pretrain_indices = split_or_all(recipe.data.split, num_samples)
    check_same_data(payload["data"], {"split_sha256": split_checksum(pretrain_indices)}, f"{checkpoint}: data.split")

    run_dir = run_folder_of(checkpoint)
    suffix = "" if checkpoint.name == CHECKPOINT_IN_RUN.name else f"-{checkpoint.stem}"
    suffix += "" if settings.exit == "backbone" else f"-{settings.exit}-exit"
    plans = plan_evaluations(settings, shots, num_samples, out_dir or run_dir / "eval", suffix)
    for plan in plans:
        if plan.shots == FULL:
            too_large = [k for k in settings.knn if k > len(plan.probe_lists[0].indices)]
            if too_large:
                raise FastltError(f"knn k = {too_large[0]}: larger than the "
                                  f"{len(plan.probe_lists[0].indices)} samples of the probe set")
        check_report_free(plan.folder, overwrite)

    test_part = store.part(settings.test_part)
    groups = class_groups(class_counts(pretrain_indices, train_part.labels, store.num_classes), settings.groups)
    probe_config = LinearProbeConfig(
        epochs=settings.epochs, lr=settings.lr, final_lr=settings.final_lr,
        weight_decay=settings.weight_decay, batch_size=settings.batch_size, seed=recipe.train.seed,
    )
    needed = np.unique(np.concatenate([p.indices for plan in plans for p in plan.probe_lists]))
    train_labels = torch.as_tensor(train_part.labels[needed], device=device)
    test_labels = torch.as_tensor(np.asarray(test_part.labels), device=device)
    autocast_dtype = PRECISION_TYPES[precision][0]

    backbones = {"": pretrained_backbone(payload, recipe, num_samples, checkpoint, settings.exit)}
    if random_init:
        backbones["random-init "] = random_backbone(recipe, num_samples, recipe.train.seed, settings.exit)
    rows: dict[str, dict[str, dict[str, Any]]] = {plan.shots: {} for plan in plans}
    timings: dict[str, float] = {}
    for prefix, module in backbones.items():
        started = time.perf_counter()
        module = module.to(device, memory_format=torch.channels_last).eval()
        features = extract_features(module, np.ascontiguousarray(train_part.images[needed]), device,
                                    autocast_dtype=autocast_dtype)
        test_features = extract_features(module, np.asarray(test_part.images), device, autocast_dtype=autocast_dtype)

        def probe_report(probe: ProbeList) -> tuple[dict[str, Any], Tensor, Tensor]:
            rows_of = torch.as_tensor(np.searchsorted(needed, probe.indices), device=device)
            x, y = features[rows_of], train_labels[rows_of]
            predictions = predict_linear(train_linear_probe(x, y, store.num_classes, probe_config), test_features)
            return accuracy_report(predictions, test_labels, store.num_classes, groups), x, y

        for plan in plans:
            if plan.shots == FULL:
                report, x, y = probe_report(plan.probe_lists[0])
                rows[FULL][f"{prefix}linear"] = report
                for k in settings.knn:
                    knn = knn_predict(x, y, test_features, k, store.num_classes)
                    rows[FULL][f"{prefix}knn@{k}"] = accuracy_report(knn, test_labels, store.num_classes, groups)
            else:
                subsets = [probe_report(probe)[0] for probe in plan.probe_lists]
                rows[plan.shots][f"{prefix}linear, {plan.shots}-shot"] = summarise_subsets(subsets)
        timings[f"{prefix or 'pretrained '}seconds"] = round(time.perf_counter() - started, 2)

    context = {
        "run": str(run_dir),
        "method": recipe.method.name,
        "epoch": int(payload["epoch"]),
        "checkpoint": {"file": str(checkpoint), "sha256": file_digest(checkpoint)},
        "store": str(store.path),
        "pretraining_split": {"file": recipe.data.split or "(the whole train part)",
                              "sha256": split_checksum(pretrain_indices)},
        "test_samples": int(len(test_part.labels)),
        "feature_precision": precision,
        "exit": settings.exit,
        "protocol": {"name": PROTOCOL, "linear": vars(probe_config), "knn": list(settings.knn),
                     "groups": settings.groups},
        "groups": {name: ids.tolist() for name, ids in groups.items()},
        "timings": timings,
    }
    folders, tables = {}, []
    for plan in plans:
        what = "full-shot" if plan.shots == FULL else f"{plan.shots}-shot, mean over {len(plan.probe_lists)} subsets"
        exit = "" if settings.exit == "backbone" else f", {settings.exit} exit"
        title = f"{run_dir.name}: {recipe.method.name}, epoch {payload['epoch']}{exit}, BCL linear probe ({what})"
        write_report(plan.folder, title, rows[plan.shots],
                     {**context, "shots": plan.shots, "probe_lists": [p.record() for p in plan.probe_lists]},
                     overwrite)
        folders[plan.shots] = plan.folder
        tables.append(f"## {title}\n\n{markdown_table(rows[plan.shots])}")
    return EvalResult(rows, folders, "\n".join(tables))
