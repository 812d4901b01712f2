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

from fastlt.choices import EVAL_PROTOCOLS, SEPARATE_PROTOCOLS
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
from fastlt.evaluate.plots import per_class_accuracy_plot
from fastlt.evaluate.linear import (
    TS_SEED,
    LinearProbeConfig,
    linear_svc_predict,
    predict_linear,
    train_linear_probe,
    ts_few_shot_subset,
    ts_linear_svc,
)
from fastlt.evaluate.sdclr_probe import SDCLRProbeConfig, train_fc_through_backbone
from fastlt.evaluate.finetune import FinetuneConfig, finetune
from fastlt.evaluate.lotar_probe import LoTaRProbeConfig, lotar_groups, lotar_scope, train_lotar_fc
from fastlt.evaluate.supcon_probe import CROP_SCALE, SupConProbeConfig, train_linear_classifiers
from fastlt.evaluate.report import (
    check_report_free,
    markdown_table,
    summarise_subsets,
    write_report,
)
from fastlt.files import file_digest
from fastlt.measure.accuracy import accuracy_report
from fastlt.measure.features import PaddedCropViews, extract_features
from fastlt.measure.knn import knn_predict
from fastlt.methods import build_method
from fastlt.models.multi_exit import BackboneExit, EnsembleExit
from fastlt.recipe import EvalConfig, Recipe, recipe_from_dict, with_store_lists
from fastlt.checkpoint import CHECKPOINTS, LAST, load_checkpoint, load_model_state, load_run_checkpoint
from fastlt.wandb_log import log_reports, require_wandb
from fastlt.progress import Stages, say
from fastlt.hardware import PRECISION_TYPES

FULL = "full"


WHOLE_PART = "the whole train part"


@dataclass(frozen=True)
class ProbeList:
    """A list of train-part samples and how reports, folder names and errors name it: its file (a store list's
    too), or, for a list no file holds (file ""), what fastlt made it from and a short name for folders.

    Indices sorted; the pretraining split keeps its file order, so its checksum is the one the run recorded,
    and so does TS's FS list, whose order the SVM sees."""

    file: str
    indices: np.ndarray
    made: str = WHOLE_PART  # file "": what the list is, e.g. "the train part outside <split file>"
    short: str = split_name("")  # file "": its name in report folders

    @property
    def label(self) -> str:
        return self.file or self.made

    @property
    def name(self) -> str:
        return split_name(self.file) if self.file else self.short

    def record(self) -> dict[str, Any]:
        return {"file": self.file or f"({self.made})", "sha256": split_checksum(self.indices),
                "samples": int(len(self.indices))}


def less_held_out(probe: ProbeList, held_out: ProbeList, pretrain: ProbeList) -> ProbeList:
    """``probe`` without the held-out samples, named for what is left: ``probe`` itself where it held none, the
    pretraining split where that is what is left (the digits: the whole part less the samples outside the split),
    else "<probe> less <held-out list>"."""
    indices = np.setdiff1d(probe.indices, held_out.indices)
    if len(indices) == len(probe.indices):
        return probe
    if np.array_equal(indices, np.sort(pretrain.indices)):
        return ProbeList(pretrain.file, indices, pretrain.made, pretrain.short)
    return ProbeList("", indices, f"{probe.label} less {held_out.label}", f"{probe.name}-less-{held_out.name}")


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


def held_out_list(settings: EvalConfig, pretrain: ProbeList, num_samples: int) -> ProbeList:
    """``eval.val_split``, or the part's samples outside the pretraining split (data.splits.held_out_indices)."""
    indices = held_out_indices(settings.val_split, pretrain.indices, num_samples)
    if settings.val_split:
        return ProbeList(settings.val_split, indices)
    return ProbeList("", indices, f"the train part outside {pretrain.label}", f"outside-{pretrain.name}")


def plan_evaluations(settings: EvalConfig, shots: tuple[str, ...], num_samples: int, pretrain: ProbeList,
                     held_out: ProbeList, reports_dir: Path, suffix: str) -> list[Evaluation]:
    """The evaluations ``eval.protocol`` asks for, with their lists loaded and report folders named.

    bcl: one per requested shot setting (full, N-shot over the subsets). sdclr: full-shot,
    and few-shot on ``eval.sdclr_few_shot_list`` when the recipe names one; its fc never
    trains on the held-out samples that choose its epoch (on CIFAR the lists are disjoint
    already; on digits the probe list is the whole part and the held-out list the samples
    outside the split, so it trains on the split, and says so). ts: one report on the
    pretraining split. Report folders are named after the lists the classifiers train on.
    """
    protocols = EVAL_PROTOCOLS if settings.protocol == "all" else (settings.protocol,)
    if "bcl" in protocols or "sdclr" in protocols:  # ts never reads the probe list
        full = ProbeList(settings.train_split, np.sort(split_or_all(settings.train_split, num_samples)))
    plans = []
    if "bcl" in protocols:
        for shot in shots:
            if shot == FULL:
                plans.append(Evaluation("bcl", FULL, [full], reports_dir / f"bcl-linear-{full.name}{suffix}"))
            else:
                plans.append(Evaluation("bcl", shot, few_shot_lists(settings, shot, num_samples),
                                        reports_dir / f"bcl-linear-{shot}shot{suffix}"))
    if "sdclr" in protocols:
        fit = less_held_out(full, held_out, pretrain)
        plans.append(Evaluation("sdclr", FULL, [fit], reports_dir / f"sdclr-linear-{fit.name}{suffix}"))
        if settings.sdclr_few_shot_list:
            few_list = ProbeList(settings.sdclr_few_shot_list,
                                 np.sort(load_split(Path(settings.sdclr_few_shot_list), num_samples)))
            few = less_held_out(few_list, held_out, pretrain)
            plans.append(Evaluation("sdclr", "few", [few], reports_dir / f"sdclr-linear-{few.name}{suffix}"))
    if "ts" in protocols:
        fs = [ProbeList(settings.ts_few_shot_list, load_split(Path(settings.ts_few_shot_list), num_samples))] \
            if settings.ts_few_shot_list else []  # the FS SVM's own list, in file order
        plans.append(Evaluation("ts", FULL, [pretrain, *fs], reports_dir / f"ts-{pretrain.name}{suffix}"))
    return plans + separate_protocol_plans(settings, num_samples, pretrain, held_out, reports_dir, suffix)


def separate_protocol_plans(settings: EvalConfig, num_samples: int, pretrain: ProbeList, held_out: ProbeList,
                            reports_dir: Path, suffix: str) -> list[Evaluation]:
    """The one evaluation a separate protocol asks for: supcon on the probe list; finetune on the probe list less
    the held-out samples (there are some only when they pick its epoch); lotar on the whole train part, as
    train_lincls.py trains on the whole balanced train set."""
    if settings.protocol not in SEPARATE_PROTOCOLS:
        return []
    full = ProbeList(settings.train_split, np.sort(split_or_all(settings.train_split, num_samples)))
    if settings.protocol == "supcon":
        return [Evaluation("supcon", FULL, [full], reports_dir / f"supcon-linear-{full.name}{suffix}")]
    if settings.protocol == "finetune":
        fit = less_held_out(full, held_out, pretrain)
        return [Evaluation("finetune", FULL, [fit], reports_dir / f"finetune-{fit.name}{suffix}")]
    whole = ProbeList("", np.arange(num_samples, dtype=np.int64))
    return [Evaluation("lotar", FULL, [whole], reports_dir / f"lotar-linear-{whole.name}{suffix}")]


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
    test_images: np.ndarray  # the test part's uint8 NHWC images: what fine-tuning and LoTaR's fc are scored on
    train_counts: np.ndarray  # images per class in the pretraining split: LoTaR's own class groups
    dataset: str  # the store's data set name: whether LoTaR's protocol is its reference's run or an analogue
    stages: Stages  # the progress line on stderr


def bcl_probe_config(inputs: ProtocolInputs) -> LinearProbeConfig:
    """BCL's probe as ``eval`` sets it, seeded with the run's seed."""
    s = inputs.settings
    return LinearProbeConfig(epochs=s.epochs, lr=s.lr, final_lr=s.final_lr, weight_decay=s.weight_decay,
                             batch_size=s.batch_size, seed=inputs.seed)


def sdclr_probe_config(plan: Evaluation, inputs: ProtocolInputs) -> SDCLRProbeConfig:
    """SDCLR's fc training: 30 epochs full-shot (x0.1 at 1/3, 2/3), 100 on the few-shot list (x0.1 at 40%, 60%)."""
    s = inputs.settings
    common = {"batch_size": s.sdclr_batch_size, "crop": s.sdclr_crop, "crop_size": s.center_crop, "seed": inputs.seed,
              "lr_step": s.sdclr_lr_step, "select": s.sdclr_select}
    if plan.shots == FULL:
        return SDCLRProbeConfig(epochs=s.sdclr_epochs, val_every=s.sdclr_val_every, **common)
    return SDCLRProbeConfig(epochs=s.sdclr_few_shot_epochs, decay_at=(0.4, 0.6), val_every=s.sdclr_few_shot_val_every,
                            **common)


def bcl_rows(plan: Evaluation, bank: FeatureBank, inputs: ProtocolInputs, prefix: str) -> dict[str, dict]:
    """BCL: the Adam probe on cached features (and kNN on the probe list, full-shot only)."""
    config = bcl_probe_config(inputs)

    def report(probe: ProbeList) -> dict[str, Any]:
        x, y = bank.of(probe.indices)
        with inputs.stages.stage(f"bcl: {prefix}linear probe on {probe.name}", config.epochs) as advance:
            fitted = train_linear_probe(x, y, inputs.num_classes, config, advance)
        predictions = predict_linear(fitted, bank.test_features)
        return accuracy_report(predictions, bank.test_labels, inputs.num_classes, inputs.groups)

    if plan.shots != FULL:
        return {f"{prefix}linear, {plan.shots}-shot": summarise_subsets([report(p) for p in plan.probe_lists])}
    rows = {f"{prefix}linear": report(plan.probe_lists[0])}
    return rows | knn_rows(*bank.of(plan.probe_lists[0].indices), bank, inputs, prefix)


def knn_rows(memory: Tensor, memory_labels: Tensor, bank: FeatureBank, inputs: ProtocolInputs,
             prefix: str) -> dict[str, dict]:
    """kNN@k for each ``eval.knn`` k with these features as the bank, ties settled by ``eval.knn_ties``."""
    return {f"{prefix}knn@{k}": accuracy_report(
        knn_predict(memory, memory_labels, bank.test_features, k, inputs.num_classes, inputs.settings.knn_ties),
        bank.test_labels, inputs.num_classes, inputs.groups) for k in inputs.settings.knn}


TS_CROP_PADDING = 4  # the CIFAR notebooks' training transform: RandomCrop(32, padding=4) + RandomHorizontalFlip


def ts_split_features(memory: ProbeList, bank: FeatureBank, inputs: ProtocolInputs, backbone: nn.Module,
                      prefix: str) -> Tensor:
    """The split's features in file order: clean (the bank's) or, with ``eval.ts_train_views = "augmented"``, one
    pass of RandomCrop(pad 4) + flip views drawn on the device from a generator seeded with the run's seed."""
    if inputs.settings.ts_train_views == "clean":
        return bank.of(memory.indices)[0]
    generator = torch.Generator(device=inputs.device).manual_seed(inputs.seed)
    views = PaddedCropViews.draw(len(memory.indices), TS_CROP_PADDING, generator)
    with inputs.stages.stage(f"ts: {prefix}augmented split features", len(memory.indices), "image") as advance:
        return extract_features(backbone, np.ascontiguousarray(inputs.train_images[memory.indices]), inputs.device,
                                autocast_dtype=inputs.autocast_dtype, center_crop=inputs.settings.center_crop,
                                views=views, after_batch=advance)


def ts_rows(plan: Evaluation, bank: FeatureBank, inputs: ProtocolInputs, prefix: str,
            backbone: nn.Module) -> dict[str, dict]:
    """Temperature Schedules as its notebooks run it: kNN and the LT LinearSVC on the split's features; the FS
    LinearSVC on the notebooks' class-balanced subsample of them, or on ``eval.ts_few_shot_list`` (clean)."""
    memory = plan.probe_lists[0]
    features, labels = ts_split_features(memory, bank, inputs, backbone, prefix), bank.of(memory.indices)[1]
    rows = knn_rows(features, labels, bank, inputs, prefix)
    if len(plan.probe_lists) > 1:
        few_shot = bank.of(plan.probe_lists[1].indices)
    else:
        subset = torch.as_tensor(ts_few_shot_subset(labels.cpu().numpy(), inputs.num_classes), device=labels.device)
        few_shot = features[subset], labels[subset]
    for name, (x, y) in (("svm FS", few_shot), ("svm LT", (features, labels))):
        with inputs.stages.stage(f"ts: {prefix}{name}", 1, "fit") as advance:
            predictions = linear_svc_predict(x, y, bank.test_features)
            advance()
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
    with inputs.stages.stage(f"sdclr: {prefix}fc on {probe_list.name}", config.epochs) as advance:
        probe = train_fc_through_backbone(backbone, images, labels, held_out_features, held_out_labels,
                                          inputs.num_classes, config, inputs.autocast_dtype, advance)
    predictions = predict_linear(probe.fc, bank.test_features)
    name = f"{prefix}linear" if plan.shots == FULL else f"{prefix}linear, few-shot"
    record = {"best_epoch": probe.best_epoch,
              "held_out_accuracy": {str(epoch): round(a, 2) for epoch, a in probe.held_out_accuracy.items()}}
    return {name: accuracy_report(predictions, bank.test_labels, inputs.num_classes, inputs.groups)}, record


def on_device(images: np.ndarray, device: torch.device) -> Tensor:
    """uint8 NHWC images (rows of a memory map, or a whole read-only one) as one tensor on the device."""
    return torch.from_numpy(np.require(images, requirements=("C_CONTIGUOUS", "WRITEABLE"))).to(device)


def supcon_probe_config(inputs: ProtocolInputs) -> SupConProbeConfig:
    """SupCon's / SelfCon's classifier training as ``eval.supcon_*`` sets it; the views as large as the test views."""
    s = inputs.settings
    return SupConProbeConfig(epochs=s.supcon_epochs, lr=s.supcon_lr, weight_decay=s.supcon_weight_decay,
                             batch_size=s.supcon_batch_size, decay_epochs=s.supcon_decay_epochs,
                             decay_rate=s.supcon_decay_rate, size=s.center_crop or inputs.train_images.shape[1],
                             seed=inputs.seed)


def supcon_rows(plan: Evaluation, bank: FeatureBank, inputs: ProtocolInputs, prefix: str,
                backbone: nn.Module) -> tuple[dict[str, dict], dict[str, Any]]:
    """SupCon / SelfCon: linear classifiers on augmented views through the frozen encoder, each row at its best test
    epoch; a multi-exit encoder's backbone exit also gets the sub-network's classifier and their ensemble
    (SelfCon's --subnet, ``eval.supcon_subnet``). Plus every row's best epoch and per-epoch test accuracy."""
    s, probe_list = inputs.settings, plan.probe_lists[0]
    _, labels = bank.of(probe_list.indices)
    if isinstance(backbone, BackboneExit) and s.supcon_subnet:
        encoder = EnsembleExit(backbone.encoder)  # [sub-network features | backbone features]
        width = backbone.feature_dim
        heads, ensemble = {"sub-network linear": width, "linear": width}, "ensemble linear"
        test_features = extract_features(encoder, np.asarray(inputs.test_images), inputs.device,
                                         autocast_dtype=inputs.autocast_dtype, center_crop=s.center_crop)
    else:
        encoder, heads, ensemble, test_features = backbone, {"linear": bank.test_features.shape[1]}, "", \
            bank.test_features
    config = supcon_probe_config(inputs)
    with inputs.stages.stage(f"supcon: {prefix}{', '.join(heads)} on {probe_list.name}", config.epochs) as advance:
        results = train_linear_classifiers(
            encoder, on_device(inputs.train_images[probe_list.indices], inputs.device), labels, test_features,
            bank.test_labels, heads, inputs.num_classes, config, ensemble, inputs.autocast_dtype, advance)
    names = [name for name in ("linear", "sub-network linear", "ensemble linear") if name in results]
    rows = {f"{prefix}{name}": accuracy_report(results[name].predictions, bank.test_labels, inputs.num_classes,
                                               inputs.groups) for name in names}
    record = {name: {"best_epoch": results[name].best_epoch,
                     "test_accuracy": [round(a, 2) for a in results[name].test_accuracy]} for name in names}
    return rows, record


def finetune_config(inputs: ProtocolInputs) -> FinetuneConfig:
    """FlatCLR's fine-tuning as ``eval.finetune_*`` sets it."""
    s = inputs.settings
    return FinetuneConfig(epochs=s.finetune_epochs, lr=s.finetune_lr, weight_decay=s.finetune_weight_decay,
                          batch_size=s.finetune_batch_size, patience=s.finetune_patience,
                          batch_norm=s.finetune_batch_norm, center_crop=s.center_crop, seed=inputs.seed)


def finetune_rows(plan: Evaluation, bank: FeatureBank, inputs: ProtocolInputs, prefix: str,
                  backbone: nn.Module) -> tuple[dict[str, dict], dict[str, Any]]:
    """FlatCLR: a copy of the backbone and a new fc trained together; the test accuracy of the epoch the test set
    (or, with ``eval.finetune_select = "held-out"``, the held-out list) picks. Plus that epoch and every epoch's
    selection accuracy."""
    fit = plan.probe_lists[0]
    _, labels = bank.of(fit.indices)
    held_out = None
    if inputs.settings.finetune_select == "held-out":
        held_out = on_device(inputs.train_images[inputs.held_out.indices], inputs.device), \
            bank.of(inputs.held_out.indices)[1]
    config = finetune_config(inputs)
    with inputs.stages.stage(f"finetune: {prefix}network and fc on {fit.name}", config.epochs) as advance:
        result = finetune(backbone, on_device(inputs.train_images[fit.indices], inputs.device), labels,
                          on_device(inputs.test_images, inputs.device), bank.test_labels,
                          bank.test_features.shape[1], inputs.num_classes, config, held_out, inputs.autocast_dtype,
                          advance)
    row = accuracy_report(result.predictions, bank.test_labels, inputs.num_classes, inputs.groups)
    return {f"{prefix}finetune": row}, {"best_epoch": result.best_epoch,
                                         "epochs_run": len(result.selection_accuracy),
                                         "selection_accuracy": [round(a, 2) for a in result.selection_accuracy]}


def lotar_probe_config(inputs: ProtocolInputs) -> LoTaRProbeConfig:
    """LoTaR's fc training as ``eval.lotar_*`` sets it."""
    s = inputs.settings
    return LoTaRProbeConfig(epochs=s.lotar_epochs, lr=s.lotar_lr, batch_size=s.lotar_batch_size, stem=s.lotar_stem,
                            center_crop=s.center_crop, seed=inputs.seed)


def lotar_rows(plan: Evaluation, bank: FeatureBank, inputs: ProtocolInputs, prefix: str,
               backbone: nn.Module) -> tuple[dict[str, dict], dict[str, Any]]:
    """LoTaR: a fresh fc on a copy of the backbone held in train mode, on the whole train part unaugmented; the last
    epoch's test accuracy with LoTaR's own many / medium / few. Plus those groups."""
    whole = plan.probe_lists[0]
    _, labels = bank.of(whole.indices)
    config = lotar_probe_config(inputs)
    with inputs.stages.stage(f"lotar: {prefix}fc on {whole.name}", config.epochs) as advance:
        probe = train_lotar_fc(backbone, on_device(inputs.train_images[whole.indices], inputs.device), labels,
                               np.asarray(inputs.test_images), bank.test_features.shape[1], inputs.num_classes,
                               config, inputs.autocast_dtype, advance)
    groups = lotar_groups(inputs.train_counts)
    row = accuracy_report(probe.predictions, bank.test_labels, inputs.num_classes, groups)
    return {f"{prefix}linear": row}, {"groups": {name: ids.tolist() for name, ids in groups.items()}}


ROWS_THROUGH_BACKBONE = {"sdclr": sdclr_rows, "supcon": supcon_rows, "finetune": finetune_rows, "lotar": lotar_rows}


def separate_protocol_record(plan: Evaluation, inputs: ProtocolInputs) -> dict[str, Any]:
    """The settings a supcon, finetune or lotar report's numbers came from."""
    s = inputs.settings
    if plan.protocol == "supcon":
        return {"name": "supcon-linear", "classifier": vars(supcon_probe_config(inputs)),
                "views": f"RandomResizedCrop(scale {CROP_SCALE[0]}..{CROP_SCALE[1]}, bilinear) + flip",
                "init": "nn.Linear's default", "reported": "each row's best test epoch (main_linear.py best_acc)",
                "subnet": s.supcon_subnet, "ensemble": "mean of the two classifiers' logits", "groups": s.groups}
    if plan.protocol == "finetune":
        record = {"name": "finetune", "finetune": vars(finetune_config(inputs)), "select": s.finetune_select,
                  "views": "unaugmented", "reported": f"the test accuracy of the best {s.finetune_select} epoch",
                  "groups": s.groups}
        return record | ({"held_out": inputs.held_out.record()} if s.finetune_select == "held-out" else {})
    return {"name": "lotar-linear", "fc": vars(lotar_probe_config(inputs)),
            "optimizer": "Adam (betas 0.9, 0.999), no weight decay", "views": "unaugmented",
            "model_mode": "train while the fc trains (batch statistics; the running statistics move), eval to test",
            "reported": "the last epoch", "scope": lotar_scope(inputs.dataset),
            "groups": "train_lincls.py's: classes by pretraining count, largest first; C // 3 many, C // 3 few, "
                      "the rest medium"}


SHORTENED = {  # what fewer epochs change in each protocol's classifier training, formatted with s = EvalConfig
    "bcl": "its lr still decays from {s.lr:g} to {s.final_lr:g}, in fewer and larger steps",
    "sdclr": "its lr still steps x0.1 at the same fractions of them",
    "supcon": "its lr still decays after epochs {s.supcon_decay_epochs}, which come late or never",
    "finetune": "it may stop before the epoch the whole schedule would pick",
    "lotar": "its fc sees fewer epochs at the reference's constant lr",
}
HEADLINES = {"ts": "class_mean"}  # the Temperature-Schedules papers report mean per-class accuracy
PROTOCOL_TITLES = {"bcl": "BCL linear probe", "sdclr": "SDCLR linear protocol",
                   "ts": "Temperature-Schedules protocol (kNN, LinearSVC)",
                   "supcon": "SupCon / SelfCon linear evaluation (main_linear.py)",
                   "finetune": "FlatCLR fine-tuning (fine_tune.py)",
                   "lotar": "LoTaR linear evaluation (train_lincls.py)"}


def protocol_record(plan: Evaluation, inputs: ProtocolInputs) -> dict[str, Any]:
    """The settings a report's numbers came from."""
    s = inputs.settings
    if plan.protocol in SEPARATE_PROTOCOLS:
        return separate_protocol_record(plan, inputs)
    if plan.protocol == "bcl":
        config = bcl_probe_config(inputs)
        return {"name": "bcl-linear", "linear": {**vars(config), "gamma": (config.final_lr / config.lr) **
                                                 (1 / config.epochs)},
                "knn": list(s.knn), "knn_ties": s.knn_ties, "groups": s.groups}
    if plan.protocol == "sdclr":
        config = sdclr_probe_config(plan, inputs)
        return {"name": "sdclr-linear", "fc": {**vars(config), "milestones": config.milestones,
                                               "init": "weight N(0, 0.01), bias 0"},
                "held_out": inputs.held_out.record(), "groups": s.groups}
    views = (f"one pass of RandomCrop(pad {TS_CROP_PADDING}) + horizontal flip, seed {inputs.seed}"
             if s.ts_train_views == "augmented" else "clean")
    few_shot = ("eval.ts_few_shot_list (clean features, file order)" if len(plan.probe_lists) > 1 else
                f"class-balanced subsample of the split (numpy seed {TS_SEED}, per-class shuffle, as many per class "
                "as the smallest class)")
    return {"name": "ts", "knn": list(s.knn), "knn_ties": s.knn_ties, "split_features": views,
            "svm": {"LinearSVC": ts_linear_svc().get_params(), "features": "L2-normalised", "FS": few_shot,
                    "LT": "the whole split"},
            "seed": inputs.seed, "groups": s.groups, "overall": "class_mean is the TS papers' kNN metric"}


def epochs_key(plan: Evaluation) -> str | None:
    """The [eval] key of the epochs a plan's classifier trains for (None: TS trains no epochs)."""
    if plan.protocol == "sdclr":
        return "sdclr_epochs" if plan.shots == FULL else "sdclr_few_shot_epochs"
    return {"bcl": "epochs", "supcon": "supcon_epochs", "finetune": "finetune_epochs",
            "lotar": "lotar_epochs"}.get(plan.protocol)


def shortened_schedules(plans: list[Evaluation], settings: EvalConfig, recorded: dict[str, Any]) -> list[str]:
    """A warning for each classifier set to train fewer epochs than the run's recipe gives its protocol: its
    schedule (BCL's lr decay, SDCLR's x0.1 steps, SupCon's decay epochs) no longer means what the protocol's
    does, and a probe squeezed this way can report far less than the features hold."""
    defaults, warnings = EvalConfig(), {}
    for plan in plans:
        key = epochs_key(plan)
        if key is None:
            continue
        protocol_epochs, epochs = recorded.get(key, getattr(defaults, key)), getattr(settings, key)
        if epochs < protocol_epochs:
            warnings[key] = (f"warning: {PROTOCOL_TITLES[plan.protocol]}: {epochs} epoch{'s' * (epochs != 1)} "
                             f"(eval.{key}) instead of the {protocol_epochs} of the run's recipe: "
                             f"{SHORTENED[plan.protocol].format(s=settings)}; its numbers are not the protocol's")
    return list(warnings.values())


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
    picks_epochs = settings.protocol in ("sdclr", "all") or (settings.protocol == "finetune"
                                                              and settings.finetune_select == "held-out")
    held_out = held_out_list(settings, pretrain, num_samples) if picks_epochs \
        else ProbeList("", np.zeros(0, dtype=np.int64), "no held-out list", "none")
    plans = plan_evaluations(settings, shots, num_samples, pretrain, held_out, out_dir or run_dir / "eval", suffix)
    for plan in plans:
        for probe_list in plan.probe_lists:  # what each classifier trains on
            check_every_class(probe_list.indices, train_part.labels, store.class_names,
                              probe_list.label)
        if plan.shots == FULL and plan.protocol in ("bcl", "ts"):
            too_large = [k for k in settings.knn if k > len(plan.probe_lists[0].indices)]
            if too_large:
                raise FastltError(f"knn k = {too_large[0]}: larger than the "
                                  f"{len(plan.probe_lists[0].indices)} samples of the memory bank")
        check_report_free(plan.folder, overwrite)
    if recipe.train.wandb:
        require_wandb()

    test_part = store.part(settings.test_part)
    train_counts = class_counts(pretrain_indices, train_part.labels, store.num_classes)
    groups = class_groups(train_counts, settings.groups)
    for warning in shortened_schedules(plans, settings, payload["recipe"].get("eval", {})):
        say(warning)
    stages = Stages(recipe.train.progress, f"linear-eval {run_dir.name}")
    inputs = ProtocolInputs(settings, store.num_classes, groups, recipe.train.seed, device,
                            PRECISION_TYPES[precision][0], train_part.images, held_out, test_part.images,
                            train_counts, store.name, stages)
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
        with stages.stage(f"features of the {prefix or 'pretrained '}backbone", len(needed) + len(test_labels),
                          "image") as advance:
            bank = FeatureBank(
                needed,
                extract_features(module, np.ascontiguousarray(train_part.images[needed]), device,
                                 autocast_dtype=inputs.autocast_dtype, center_crop=settings.center_crop,
                                 after_batch=advance),
                train_labels,
                extract_features(module, np.asarray(test_part.images), device, autocast_dtype=inputs.autocast_dtype,
                                 center_crop=settings.center_crop, after_batch=advance),
                test_labels,
            )
        for plan in plans:
            if plan.protocol == "bcl":
                rows[plan.key] |= bcl_rows(plan, bank, inputs, prefix)
            elif plan.protocol == "ts":
                rows[plan.key] |= ts_rows(plan, bank, inputs, prefix, module)
            else:
                found, record = ROWS_THROUGH_BACKBONE[plan.protocol](plan, bank, inputs, prefix, module)
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
            what = {"ts": "long-tailed split", "sdclr": "full-shot" if plan.shots == FULL else "few-shot",
                    "lotar": lotar_scope(store.name)}.get(plan.protocol, "full-shot")
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
    if recipe.train.wandb:  # the reports join the run's W&B run
        log_reports(run_dir, recipe, {plan.folder.name: rows[plan.key] for plan in plans})
    return EvalResult(rows, folders, "\n".join(tables))
