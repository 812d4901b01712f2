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

from fastlt.data.splits import (
    check_every_class,
    class_counts,
    class_groups,
    held_out_indices,
    load_split,
    split_checksum,
    split_name,
    split_or_all,
)
from fastlt.data.store import Store, check_same_data
from fastlt.errors import FastltError
from fastlt.evaluate.features import extract_features
from fastlt.evaluate.knn import knn_predict
from fastlt.evaluate.plots import per_class_accuracy_plot
from fastlt.evaluate.linear import LinearProbeConfig, linear_svc_predict, predict_linear, train_linear_probe
from fastlt.evaluate.sdclr_probe import SDCLRProbeConfig, train_fc_through_backbone
from fastlt.evaluate.report import (
    accuracy_report,
    check_report_free,
    markdown_table,
    summarise_subsets,
    write_report,
)
from fastlt.files import file_digest
from fastlt.methods import build_method
from fastlt.recipe import EVAL_PROTOCOLS, EvalConfig, Recipe, recipe_from_dict, with_store_lists
from fastlt.train.checkpoint import CHECKPOINTS, LAST, load_checkpoint, load_model_state, load_run_checkpoint
from fastlt.train.device import PRECISION_TYPES
from fastlt.train.progress import say

FULL = "full"


@dataclass(frozen=True)
class ProbeList:
    """A list of train-part samples: its file ("" = the whole part) and indices (sorted; the pretraining split
    keeps its file order, so its checksum is the one the run recorded)."""

    file: str
    indices: np.ndarray

    def record(self) -> dict[str, Any]:
        return {"file": self.file or "(the whole train part)", "sha256": split_checksum(self.indices),
                "samples": int(len(self.indices))}


@dataclass(frozen=True)
class Evaluation:
    """What one report measures: one protocol on one list (full-shot, the TS split) or on several subsets."""

    protocol: str  # "bcl", "sdclr" or "ts"
    shots: str  # "full" or e.g. "100" (BCL), "few" (SDCLR's S_b)
    probe_lists: list[ProbeList]
    folder: Path

    @property
    def key(self) -> str:
        return f"{self.protocol}:{self.shots}"


@dataclass(frozen=True)
class EvalResult:
    """Rows of each evaluation's report ("protocol:shots" -> row name -> accuracy report) and where they went."""

    reports: dict[str, dict[str, dict[str, Any]]]
    folders: dict[str, Path]
    markdown: str


@dataclass(frozen=True)
class FeatureBank:
    """One backbone's frozen features of the train-part rows ``rows`` (sorted) and of the test part, on the device."""

    rows: np.ndarray
    features: Tensor
    labels: Tensor
    test_features: Tensor
    test_labels: Tensor

    def of(self, indices: np.ndarray) -> tuple[Tensor, Tensor]:
        """Features and labels of these train-part indices (all of them among ``rows``)."""
        at = torch.as_tensor(np.searchsorted(self.rows, indices), device=self.features.device)
        return self.features[at], self.labels[at]


def read_checkpoint(target: Path) -> tuple[Path, dict[str, Any]]:
    """A run folder means its last checkpoint (previous.pt, with a warning, where last.pt is unreadable);
    a file is taken as it is. Returns the file and its contents."""
    if target.is_dir():
        return load_run_checkpoint(target, say)
    return target, load_checkpoint(target)


def run_folder_of(checkpoint: Path) -> Path:
    """The run a checkpoint belongs to (``RUN/checkpoints/x.pt``), else the checkpoint's own folder."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint.parent


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


def held_out_list(settings: EvalConfig, pretrain_indices: np.ndarray, num_samples: int) -> ProbeList:
    """``eval.val_split``, or the part's samples outside the pretraining split (data.splits.held_out_indices)."""
    return ProbeList(settings.val_split, held_out_indices(settings.val_split, pretrain_indices, num_samples))


def plan_evaluations(settings: EvalConfig, shots: tuple[str, ...], num_samples: int, pretrain: ProbeList,
                     held_out: ProbeList, reports_dir: Path, suffix: str) -> list[Evaluation]:
    """The evaluations ``eval.protocol`` asks for, with their lists loaded and report folders named.

    bcl: one per requested shot setting (full, N-shot over the subsets). sdclr: full-shot,
    and few-shot on ``eval.sdclr_few_shot_list`` when the recipe names one; its fc never
    trains on the held-out samples that choose its epoch (on CIFAR the lists are disjoint
    already; on digits the probe list is the whole part). ts: one report on the pretraining split.
    """
    protocols = EVAL_PROTOCOLS if settings.protocol == "all" else (settings.protocol,)
    full_name = split_name(settings.train_split)
    if "bcl" in protocols or "sdclr" in protocols:  # ts never reads the probe list
        full = ProbeList(settings.train_split, np.sort(split_or_all(settings.train_split, num_samples)))
    plans = []
    if "bcl" in protocols:
        for shot in shots:
            if shot == FULL:
                plans.append(Evaluation("bcl", FULL, [full], reports_dir / f"bcl-linear-{full_name}{suffix}"))
            else:
                plans.append(Evaluation("bcl", shot, few_shot_lists(settings, shot, num_samples),
                                        reports_dir / f"bcl-linear-{shot}shot{suffix}"))
    if "sdclr" in protocols:
        fit = ProbeList(full.file, np.setdiff1d(full.indices, held_out.indices))
        plans.append(Evaluation("sdclr", FULL, [fit], reports_dir / f"sdclr-linear-{full_name}{suffix}"))
        if settings.sdclr_few_shot_list:
            few_indices = load_split(Path(settings.sdclr_few_shot_list), num_samples)
            few = ProbeList(settings.sdclr_few_shot_list, np.setdiff1d(few_indices, held_out.indices))
            plans.append(Evaluation("sdclr", "few", [few], reports_dir /
                                    f"sdclr-linear-{split_name(settings.sdclr_few_shot_list)}{suffix}"))
    if "ts" in protocols:
        plans.append(Evaluation("ts", FULL, [pretrain], reports_dir / f"ts-{split_name(pretrain.file)}{suffix}"))
    return plans


@dataclass(frozen=True)
class ProtocolInputs:
    """What every protocol's evaluation needs besides the features."""

    settings: EvalConfig
    num_classes: int
    groups: dict[str, np.ndarray]
    seed: int
    device: torch.device
    autocast_dtype: torch.dtype | None
    train_images: np.ndarray  # the train part's uint8 NHWC images (a memory map): the SDCLR probe's input
    held_out: ProbeList


def bcl_probe_config(inputs: ProtocolInputs) -> LinearProbeConfig:
    """BCL's probe as ``eval`` sets it, seeded with the run's seed."""
    s = inputs.settings
    return LinearProbeConfig(epochs=s.epochs, lr=s.lr, final_lr=s.final_lr, weight_decay=s.weight_decay,
                             batch_size=s.batch_size, seed=inputs.seed)


def sdclr_probe_config(plan: Evaluation, inputs: ProtocolInputs) -> SDCLRProbeConfig:
    """SDCLR's fc training: 30 epochs full-shot (x0.1 at 1/3, 2/3), 100 on the few-shot list (x0.1 at 40%, 60%)."""
    s = inputs.settings
    views = {"batch_size": s.sdclr_batch_size, "crop": s.sdclr_crop, "crop_size": s.center_crop, "seed": inputs.seed}
    if plan.shots == FULL:
        return SDCLRProbeConfig(epochs=s.sdclr_epochs, **views)
    return SDCLRProbeConfig(epochs=s.sdclr_few_shot_epochs, decay_at=(0.4, 0.6), **views)


def bcl_rows(plan: Evaluation, bank: FeatureBank, inputs: ProtocolInputs, prefix: str) -> dict[str, dict]:
    """BCL: the Adam probe on cached features (and kNN on the probe list, full-shot only)."""
    config = bcl_probe_config(inputs)

    def report(probe: ProbeList) -> dict[str, Any]:
        x, y = bank.of(probe.indices)
        predictions = predict_linear(train_linear_probe(x, y, inputs.num_classes, config), bank.test_features)
        return accuracy_report(predictions, bank.test_labels, inputs.num_classes, inputs.groups)

    if plan.shots != FULL:
        return {f"{prefix}linear, {plan.shots}-shot": summarise_subsets([report(p) for p in plan.probe_lists])}
    rows = {f"{prefix}linear": report(plan.probe_lists[0])}
    return rows | knn_rows(plan.probe_lists[0], bank, inputs, prefix)


def knn_rows(memory: ProbeList, bank: FeatureBank, inputs: ProtocolInputs, prefix: str) -> dict[str, dict]:
    """kNN@k for each ``eval.knn`` k with ``memory`` as the bank."""
    x, y = bank.of(memory.indices)
    return {f"{prefix}knn@{k}": accuracy_report(knn_predict(x, y, bank.test_features, k, inputs.num_classes),
                                                bank.test_labels, inputs.num_classes, inputs.groups)
            for k in inputs.settings.knn}


def ts_rows(plan: Evaluation, bank: FeatureBank, inputs: ProtocolInputs, prefix: str) -> dict[str, dict]:
    """Temperature Schedules: kNN and the FS / LT LinearSVCs, all on the long-tailed pretraining split."""
    memory = plan.probe_lists[0]
    rows = knn_rows(memory, bank, inputs, prefix)
    x, y = bank.of(memory.indices)
    for name, balanced in (("svm FS", True), ("svm LT", False)):
        predictions = linear_svc_predict(x, y, bank.test_features, balanced=balanced, seed=inputs.seed)
        rows[f"{prefix}{name}"] = accuracy_report(predictions, bank.test_labels, inputs.num_classes, inputs.groups)
    return rows


def sdclr_rows(plan: Evaluation, bank: FeatureBank, inputs: ProtocolInputs, prefix: str,
               backbone: nn.Module) -> tuple[dict[str, dict], dict[str, Any]]:
    """SDCLR: the fc trained through the frozen backbone, the best epoch on the held-out list; plus its record."""
    probe_list = plan.probe_lists[0]
    config = sdclr_probe_config(plan, inputs)
    images = torch.from_numpy(np.ascontiguousarray(inputs.train_images[probe_list.indices])).to(inputs.device)
    _, labels = bank.of(probe_list.indices)
    held_out_features, held_out_labels = bank.of(inputs.held_out.indices)
    probe = train_fc_through_backbone(backbone, images, labels, held_out_features, held_out_labels,
                                      inputs.num_classes, config, inputs.autocast_dtype)
    predictions = predict_linear(probe.fc, bank.test_features)
    name = f"{prefix}linear" if plan.shots == FULL else f"{prefix}linear, few-shot"
    record = {"best_epoch": probe.best_epoch, "held_out_accuracy": [round(a, 2) for a in probe.held_out_accuracy]}
    return {name: accuracy_report(predictions, bank.test_labels, inputs.num_classes, inputs.groups)}, record


HEADLINES = {"ts": "class_mean"}  # the Temperature-Schedules papers report mean per-class accuracy
PROTOCOL_TITLES = {"bcl": "BCL linear probe", "sdclr": "SDCLR linear protocol",
                   "ts": "Temperature-Schedules protocol (kNN, LinearSVC)"}


def protocol_record(plan: Evaluation, inputs: ProtocolInputs) -> dict[str, Any]:
    """The settings a report's numbers came from."""
    s = inputs.settings
    if plan.protocol == "bcl":
        return {"name": "bcl-linear", "linear": vars(bcl_probe_config(inputs)), "knn": list(s.knn), "groups": s.groups}
    if plan.protocol == "sdclr":
        config = sdclr_probe_config(plan, inputs)
        return {"name": "sdclr-linear", "fc": {**vars(config), "milestones": config.milestones},
                "held_out": inputs.held_out.record(), "groups": s.groups}
    return {"name": "ts", "knn": list(s.knn), "svm": "LinearSVC defaults on L2-normalised features; FS on a "
            "class-balanced subsample (smallest class count)", "seed": inputs.seed, "groups": s.groups,
            "overall": "class_mean is the TS papers' kNN metric"}


def mean_per_class(subsets: list[list[float | None]]) -> list[float | None]:
    """Each class's accuracy averaged over few-shot subsets (None where a class has no test image)."""
    return [None if None in values else float(np.mean(values)) for values in zip(*subsets)]


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
    """Evaluate a run folder or checkpoint with its recipe's [eval] protocol(s); one report folder per evaluation.

    overrides replace [eval] settings (e.g. {"epochs": 100, "protocol": "all"}); store_path
    replaces the data store recorded in the recipe (for a run trained on another machine);
    shots holds "full" and/or numbers of shots for the BCL probe (few-shot lists from
    ``eval.shot_lists``); precision ("fp32", "bf16", "fp16") is the autocast of the backbone.
    Every input is checked, and every report folder is free (or ``overwrite``), before any
    feature is extracted. Features are extracted once per backbone for every protocol.
    """
    checkpoint, payload = read_checkpoint(target)
    raw = {**payload["recipe"], "eval": {**payload["recipe"].get("eval", {}), **(overrides or {})}}
    recipe = recipe_from_dict(raw, source=f"{checkpoint} (recipe)",
                              origins={("eval", key): "linear-eval" for key in overrides or {}})
    device = torch.device(device)
    store = Store.open(store_path or Path(recipe.data.store))
    recipe = with_store_lists(recipe, store.list_file)
    settings = recipe.eval
    check_same_data(payload["data"], store.identity(recipe.data.part), f"{checkpoint}: store {store.path}")
    train_part = store.part(recipe.data.part)
    num_samples = len(train_part.labels)
    pretrain_indices = split_or_all(recipe.data.split, num_samples)
    check_same_data(payload["data"], {"split_sha256": split_checksum(pretrain_indices)}, f"{checkpoint}: data.split")
    pretrain = ProbeList(recipe.data.split, pretrain_indices)  # in file order: its checksum is the run's

    run_dir = run_folder_of(checkpoint)
    suffix = "" if checkpoint.name == LAST else f"-{checkpoint.stem}"
    suffix += "" if settings.exit == "backbone" else f"-{settings.exit}-exit"
    held_out = held_out_list(settings, pretrain.indices, num_samples) if settings.protocol in ("sdclr", "all") \
        else ProbeList("", np.zeros(0, dtype=np.int64))
    plans = plan_evaluations(settings, shots, num_samples, pretrain, held_out, out_dir or run_dir / "eval", suffix)
    for plan in plans:
        for probe_list in plan.probe_lists:  # what each classifier trains on
            check_every_class(probe_list.indices, train_part.labels, store.class_names,
                              probe_list.file or "the whole train part")
        if plan.shots == FULL and plan.protocol in ("bcl", "ts"):
            too_large = [k for k in settings.knn if k > len(plan.probe_lists[0].indices)]
            if too_large:
                raise FastltError(f"knn k = {too_large[0]}: larger than the "
                                  f"{len(plan.probe_lists[0].indices)} samples of the memory bank")
        check_report_free(plan.folder, overwrite)

    test_part = store.part(settings.test_part)
    train_counts = class_counts(pretrain_indices, train_part.labels, store.num_classes)
    groups = class_groups(train_counts, settings.groups)
    inputs = ProtocolInputs(settings, store.num_classes, groups, recipe.train.seed, device,
                            PRECISION_TYPES[precision][0], train_part.images, held_out)
    needed = np.unique(np.concatenate([held_out.indices] + [p.indices for plan in plans for p in plan.probe_lists]))
    train_labels = torch.as_tensor(train_part.labels[needed], device=device)
    test_labels = torch.as_tensor(np.asarray(test_part.labels), device=device)

    backbones = {"": pretrained_backbone(payload, recipe, num_samples, checkpoint, settings.exit)}
    if random_init:
        backbones["random-init "] = random_backbone(recipe, num_samples, recipe.train.seed, settings.exit)
    rows: dict[str, dict[str, dict[str, Any]]] = {plan.key: {} for plan in plans}
    extra: dict[str, dict[str, Any]] = {plan.key: {} for plan in plans}
    timings: dict[str, float] = {}
    for prefix, module in backbones.items():
        started = time.perf_counter()
        module = module.to(device, memory_format=torch.channels_last).eval()
        bank = FeatureBank(
            needed,
            extract_features(module, np.ascontiguousarray(train_part.images[needed]), device,
                             autocast_dtype=inputs.autocast_dtype, center_crop=settings.center_crop),
            train_labels,
            extract_features(module, np.asarray(test_part.images), device, autocast_dtype=inputs.autocast_dtype,
                             center_crop=settings.center_crop),
            test_labels,
        )
        for plan in plans:
            if plan.protocol == "bcl":
                rows[plan.key] |= bcl_rows(plan, bank, inputs, prefix)
            elif plan.protocol == "ts":
                rows[plan.key] |= ts_rows(plan, bank, inputs, prefix)
            else:
                found, record = sdclr_rows(plan, bank, inputs, prefix, module)
                rows[plan.key] |= found
                extra[plan.key][f"{prefix}fc"] = record
        timings[f"{prefix or 'pretrained '}seconds"] = round(time.perf_counter() - started, 2)

    context = {
        "run": str(run_dir),
        "method": recipe.method.name,
        "epoch": int(payload["epoch"]),
        "checkpoint": {"file": str(checkpoint), "sha256": file_digest(checkpoint)},
        "backbone": {"arch": recipe.model.arch, "width": recipe.model.width, "stem": recipe.model.stem},
        "store": str(store.path),
        "pretraining_split": pretrain.record(),
        "test_samples": int(len(test_part.labels)),
        "feature_precision": precision,
        "exit": settings.exit,
        "groups": {name: ids.tolist() for name, ids in groups.items()},
        "timings": timings,
    }
    folders, tables = {}, []
    for plan in plans:
        if plan.protocol == "bcl" and plan.shots != FULL:
            what = f"{plan.shots}-shot, mean over {len(plan.probe_lists)} subsets"
        else:
            what = {"ts": "long-tailed split", "sdclr": "full-shot" if plan.shots == FULL else "few-shot"}.get(
                plan.protocol, "full-shot")
        exit = "" if settings.exit == "backbone" else f", {settings.exit} exit"
        title = (f"{run_dir.name}: {recipe.method.name}, epoch {payload['epoch']}{exit}, "
                 f"{PROTOCOL_TITLES[plan.protocol]} ({what})")
        first_name, first = next(iter(rows[plan.key].items()))
        per_class = first.get("per_class") or mean_per_class([r["per_class"] for r in first["per_subset"]])

        def figure(path: Path, per_class=per_class, caption=f"{run_dir.name}: {first_name} ({what})") -> None:
            per_class_accuracy_plot(per_class, train_counts, groups, path, caption)

        write_report(plan.folder, title, rows[plan.key],
                     {**context, "protocol": protocol_record(plan, inputs), "shots": plan.shots,
                      "probe_lists": [p.record() for p in plan.probe_lists], **extra[plan.key]},
                     overwrite, HEADLINES.get(plan.protocol, "overall"), figure)
        folders[plan.key] = plan.folder
        tables.append(f"## {title}\n\n{markdown_table(rows[plan.key], HEADLINES.get(plan.protocol, 'overall'))}")
    return EvalResult(rows, folders, "\n".join(tables))
