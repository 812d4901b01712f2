"""Experiment recipes: TOML files with one table per stage, validated against typed defaults.

A recipe names everything a run depends on (data, views, model, method, optimiser,
training loop). Unknown keys and wrong types are errors that name the file and the
key, so a typo never silently falls back to a default. ``--set section.key=value``
overrides are parsed as TOML values and checked the same way.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from fastlt.augment.views import ViewConfig
from fastlt.choices import EVAL_EXITS, PROTOCOL_CHOICES
from fastlt.data.store import STORE_LIST
from fastlt.errors import FastltError
from fastlt.files import read_text
from fastlt.shipped import shipped_folder


def _rule(test: Callable[[Any], bool], expected: str) -> dict[str, Any]:
    """Field metadata: the valid values of a numeric or named setting, checked when a recipe loads."""
    return {"valid": test, "expected": expected}


POSITIVE = _rule(lambda v: v > 0, "> 0")
NON_NEGATIVE = _rule(lambda v: v >= 0, ">= 0")
AT_LEAST_1 = _rule(lambda v: v >= 1, ">= 1")
AT_LEAST_2 = _rule(lambda v: v >= 2, ">= 2")
FRACTION = _rule(lambda v: 0 <= v < 1, "in [0, 1)")
SIGN = _rule(lambda v: v in (-1, 1), "+1 or -1")
ALL_AT_LEAST_1 = _rule(lambda values: all(v >= 1 for v in values), "a list of integers >= 1")


def one_of(*choices: str) -> dict[str, Any]:
    return _rule(lambda v: v in choices, "one of " + ", ".join(choices))


def setting(default: Any, meaning: str, rule: dict[str, Any] | None = None) -> Any:
    """A dataclass field with its one-line meaning (``fastlt recipe show``) and valid range attached."""
    return field(default=default, metadata={**(rule or {}), "meaning": meaning})


@dataclass
class DataConfig:
    """Which store to train on and which of its samples (split file or all of the part)."""

    store: str = setting("", "native store folder (fastlt convert), relative to the current folder")
    part: str = setting("train", "part of the store to pretrain on")
    split: str = setting("", "SDCLR-format .npy of indices into the part, relative to the recipe's folder, "
                             "or store:NAME (a list the store keeps); "
                             "empty = the whole part")


@dataclass
class ModelConfig:
    """Backbone and projection head."""

    arch: str = setting("resnet18", "backbone: resnet18, resnet34 or resnet50")
    stem: str = setting("cifar", "cifar: 3x3 stride-1 convolution, no max-pool; imagenet: 7x7 stride 2 + max-pool",
                        one_of("cifar", "imagenet"))
    width: int = setting(64, "channels of the first stage (64 = the standard ResNet)", AT_LEAST_1)
    projector_hidden: int = setting(512, "hidden size of the head", AT_LEAST_1)
    projector_out: int = setting(128, "embedding size the loss sees", AT_LEAST_1)
    projector_layers: int = setting(2, "linear layers in the head (SDCLR's own head has 3)", AT_LEAST_1)
    head: str = setting("projector", "projector: SimCLR's, batch norm after each linear; mlp: SupCon's and "
                                     "FlatCLR's, Linear ReLU Linear; lotar: LoTaR's, Linear to model.fc_dim then "
                                     "the mlp", one_of("projector", "mlp", "lotar"))
    fc_dim: int = setting(512, "lotar head: outputs of the backbone's fc before the mlp (LoTaR's encoder_dim)",
                          AT_LEAST_1)
    exit_after: int = setting(2, "multi-exit encoder: the stage after which the sub-network leaves",
                              _rule(lambda v: v in (1, 2, 3), "1, 2 or 3"))
    subnetwork: str = setting("fc", "multi-exit encoder: fc (pool + linear), same (unshared later stages) "
                                    "or small (half as deep)", one_of("fc", "same", "small"))


@dataclass
class MethodConfig:
    """A method preset, optionally changed on any axis, and the settings of each axis.

    A preset (fastlt.methods.PRESETS) is one choice per axis: encoder, view strength,
    objective, temperature schedule, sample weights. Setting an axis here overrides the
    preset's choice on it, so e.g. SDCLR with BCL-I views, or BCL-D with a cosine
    temperature, is one line.
    """

    name: str = setting("simclr", "method preset, one choice per axis (fastlt pretrain --list)")
    encoder: str = setting("", "encoder axis: plain, self-damaging, multi-exit (one view) or multi-exit-multiview "
                               "(two views); empty = the preset's")
    view_strength: str = setting("", "view-strength axis: fixed, bcl-i or bcl-d; empty = the preset's")
    objective: str = setting("", "objective axis: infonce, flatnce, supcon, supcon-unsupervised or one registered "
                                 "by a plugin; empty = the preset's")
    temperature_schedule: str = setting("", "temperature axis: constant or cosine; empty = the preset's")
    sample_weights: str = setting("", "sample-weight axis: none or lotar; empty = the preset's")
    temperature: float = setting(0.2, "the constant temperature tau", POSITIVE)
    temperature_min: float = setting(0.1, "cosine schedule: tau at epoch temperature_period", POSITIVE)
    temperature_max: float = setting(1.0, "cosine schedule: tau at epoch 0 and 2 x temperature_period", POSITIVE)
    temperature_period: int = setting(200, "cosine schedule: t_max, half the period in epochs", AT_LEAST_1)
    lotar_sign: float = setting(-1.0, "LoTaR weights 1 + sign (d - mean d) / (max d - min d): -1 the code's, "
                                      "+1 the README's", SIGN)
    view_forward: str = setting("", "two views through the encoder: joint (one batch of 2B, batch-norm statistics "
                                    "over both) or separate (one forward per view, LoTaR's); empty = the "
                                    "encoder's own (plain: joint; self-damaging: one view per branch)",
                                one_of("", "joint", "separate"))
    pruning_ratio: float = setting(0.9, "self-damaging: fraction of convolution weights pruned each epoch", FRACTION)
    sdclr_forwards: int = setting(2, "self-damaging: forwards per step, 2 (one per branch, one backward) or 3 (the "
                                     "reference's: the pruned branch twice, two backwards; same gradients, the "
                                     "pruned batch norms' running statistics updated twice)",
                                  _rule(lambda v: v in (2, 3), "2 or 3"))
    boost_momentum: float = setting(0.97, "BCL: beta of the per-sample momentum loss", FRACTION)
    contrast_mode: str = setting("all", "anchors: all (every embedding of both views or exits) or one (the first "
                                        "view's only, SupCon's contrast_mode; SelfCon: the sub-network exit's)",
                                 one_of("all", "one"))


@dataclass
class OptimConfig:
    """SGD or LARS with per-iteration linear warm-up then cosine decay."""

    name: str = setting("sgd", "optimiser: sgd, or lars (fastlt's LARS: LoTaR's and FlatCLR's, lr inside the "
                               "momentum buffer)", one_of("sgd", "lars"))
    lr: float = setting(0.5, "peak learning rate, reached after the warm-up (scaled by optim.lr_scaling)", POSITIVE)
    lr_scaling: str = setting("none", "how optim.lr becomes the peak: none (as it is), linear (x batch / 256) or "
                                      "sqrt (x sqrt(batch): FlatCLR's README rule for small batches, with lr 0.075)",
                              one_of("none", "linear", "sqrt"))
    momentum: float = setting(0.9, "momentum", FRACTION)
    weight_decay: float = setting(5e-4, "weight decay", NON_NEGATIVE)
    exclude_bn_bias: bool = setting(False, "no weight decay (and no LARS trust ratio) on batch-norm parameters "
                                           "and biases")
    lars_trust: float = setting(1e-3, "LARS trust coefficient eta", POSITIVE)
    lars_denominator: str = setting("norm-sum", "LARS trust ratio eta |w| / D: norm-sum, D = |g| + wd |w| "
                                                "(LoTaR's), or decayed-grad, D = |g + wd w| (FlatCLR's)",
                                    one_of("norm-sum", "decayed-grad"))
    warmup_epochs: float = setting(10.0, "epochs of linear warm-up from 0, per iteration", NON_NEGATIVE)
    final_lr: float = setting(1e-6, "learning rate the cosine decay ends at", NON_NEGATIVE)
    lr_step_offset: int = setting(1, "optimiser step i runs at the schedule's step i + offset: 1 = scheduler "
                                     "stepped before the optimiser (SDCLR, BCL, TS), 0 = after it (LoTaR, "
                                     "FlatCLR: the first step at lr 0)", _rule(lambda v: v in (0, 1), "0 or 1"))

    def check(self) -> None:
        if self.final_lr > self.lr:
            raise FastltError(f"optim.final_lr: must not exceed optim.lr ({self.lr}), got {self.final_lr}")


@dataclass
class TrainConfig:
    """The loop: length, batch, hardware choices, checkpoints, and where the run folder goes."""

    epochs: int = setting(2000, "length of the schedule in epochs", AT_LEAST_1)
    batch_size: int = setting(512, "images per step (a contrastive batch needs negatives)", AT_LEAST_2)
    seed: int = setting(1, "seed of the initialisation, the batch order and the views", NON_NEGATIVE)
    drop_last: bool = setting(False, "drop the partial last batch (the reference loaders keep it; FlatNCE drops it)")
    precision: str = setting("auto", "autocast: auto (bf16 where native, fp16 + loss scaling on other GPUs, "
                                     "else fp32), bf16, fp16 or fp32", one_of("auto", "bf16", "fp16", "fp32"))
    compile: str = setting("auto", "torch.compile the step: auto (on for CUDA), on, off or max (CUDA: autotuned "
                                   "kernels replayed as CUDA graphs, a longer cold compile; on a CPU as on)",
                           one_of("auto", "on", "off", "max"))
    compile_views: str = setting("auto", "torch.compile the view pipeline: auto (on for CUDA, and on a CPU for "
                                         "runs of at least 1M training images, which repay the compile), on or off",
                                 one_of("auto", "on", "off"))
    memory_format: str = setting("auto", "auto (channels_last unless a CPU kernel fails), channels_last or "
                                         "contiguous", one_of("auto", "channels_last", "contiguous"))
    device: str = setting("auto", "auto (the first CUDA device, else the CPU), cpu, cuda or cuda:N")
    out_dir: str = setting("runs", "folder for run folders, relative to the current folder")
    name: str = setting("", "run folder name; empty = the recipe's stem and a timestamp")
    log_every: int = setting(50, "steps between reads of the device-side loss", AT_LEAST_1)
    checkpoint_every: int = setting(0, "epochs between checkpoints (at the epochs divisible by it), as well as "
                                       "those of train.checkpoint_minutes; 0 = off", NON_NEGATIVE)
    checkpoint_minutes: float = setting(5.0, "minutes between checkpoints: one at the first epoch end this long "
                                             "after the last; 0 = off. The last epoch, milestones and a stop are "
                                             "always saved", NON_NEGATIVE)
    sync_bn: bool = setting(False, "several CUDA processes: batch-norm statistics over the global batch "
                                   "(torch.nn.SyncBatchNorm); off = each process normalises its own share, as DDP "
                                   "does by default")
    keep_every: int = setting(0, "epochs between milestone checkpoints kept as checkpoints/epoch<N>.pt (besides "
                                 "last.pt and previous.pt); 0 = none", NON_NEGATIVE)
    progress: bool = setting(True, "a progress line on stderr")
    monitor_every: int = setting(0, "epochs between held-out kNN checks, also after the last epoch (monitor_knn "
                                    "and its many / medium / few in metrics.jsonl; k = the first eval.knn, bank = "
                                    "data.split, queries = eval.val_split); 0 = off", NON_NEGATIVE)
    tensorboard: bool = setting(False, "also write every metrics.jsonl number to RUN/tensorboard "
                                       "(pip install 'fastlt[tensorboard]')")
    wandb: bool = setting(False, "also log every metrics.jsonl number, the recipe, the hardware choices and "
                                 "linear-eval's reports to Weights & Biases, files in RUN/wandb "
                                 "(pip install 'fastlt[wandb]')")
    wandb_project: str = setting("fastlt", "train.wandb: the W&B project")
    wandb_mode: str = setting("offline", "train.wandb: offline (nothing leaves the machine until wandb sync), "
                                         "online or disabled", one_of("offline", "online", "disabled"))
    wandb_group: str = setting("", "train.wandb: the W&B group (a sweep's name); empty = none")


@dataclass
class EvalConfig:
    """Linear evaluation (BCL protocol by default, docs/evaluation.md) and kNN."""

    protocol: str = setting("bcl", "bcl (linear probe on cached features), sdclr (fc through the frozen backbone "
                                   "on augmented images), ts (kNN and LinearSVCs on the LT split), all (those "
                                   "three), supcon (SupCon's and SelfCon's linear classifier on augmented views), "
                                   "finetune (FlatCLR's: the whole network with a new fc) or lotar (LoTaR's fc "
                                   "with batch-norm statistics in train mode)",
                            one_of(*PROTOCOL_CHOICES))
    train_split: str = setting("", "the probe's training indices, relative to the recipe's folder, or store:NAME; "
                                   "empty = the whole part")
    val_split: str = setting("", "held-out indices of the training part (SDCLR protocol's best epoch, the online "
                                 "monitor), relative to the recipe's folder, or store:NAME; empty = the part's samples "
                                 "outside data.split")
    shot_lists: str = setting("", "few-shot probe lists: a file pattern with {shots} and {subset}, relative to "
                                  "the recipe's folder; empty = none")
    shot_subsets: int = setting(5, "few-shot subsets {subset} = 1..shot_subsets", AT_LEAST_1)
    test_part: str = setting("test", "part of the store the probe is tested on")
    sdclr_epochs: int = setting(30, "SDCLR protocol: full-shot epochs (lr x0.1 at 1/3 and 2/3)", AT_LEAST_1)
    sdclr_few_shot_list: str = setting("", "SDCLR protocol: the few-shot list (the split's S_b), relative to the "
                                           "recipe's folder, or store:NAME; empty = no few-shot report")
    sdclr_few_shot_epochs: int = setting(100, "SDCLR protocol: few-shot epochs (lr x0.1 at 40% and 60%)",
                                         AT_LEAST_1)
    sdclr_crop: str = setting("padded", "SDCLR protocol: training views, padded (RandomCrop with 4 px padding, "
                                        "CIFAR) or resized (RandomResizedCrop to eval.center_crop, ImageNet-100)",
                              one_of("padded", "resized"))
    sdclr_batch_size: int = setting(128, "SDCLR protocol: fc batch size (128 CIFAR, 512 ImageNet-100)", AT_LEAST_1)
    sdclr_lr_step: str = setting("before-epoch", "SDCLR protocol: the lr scheduler steps before each epoch (CIFAR "
                                                 "code: x0.1 from epoch 10 of 1..30) or after-epoch (ImageNet-100 "
                                                 "code: from epoch 11)", one_of("before-epoch", "after-epoch"))
    sdclr_val_every: int = setting(1, "SDCLR protocol: full-shot held-out check after every N-th epoch (1 CIFAR, "
                                      "2 ImageNet-100); the best checked epoch is kept", AT_LEAST_1)
    sdclr_few_shot_val_every: int = setting(5, "SDCLR protocol: few-shot held-out check after every N-th epoch "
                                               "(5 CIFAR, 10 ImageNet-100)", AT_LEAST_1)
    sdclr_select: str = setting("top1", "SDCLR protocol: the held-out accuracy that picks the best epoch, top1 "
                                        "(CIFAR) or top5 (ImageNet-100)", one_of("top1", "top5"))
    center_crop: int = setting(0, "evaluation views: the centre square of this side (224 on a 256 px ImageNet "
                                  "store: Resize 256 + CenterCrop 224); 0 = the whole image", NON_NEGATIVE)
    groups: str = setting("thirds", "many/medium/few: thirds (CIFAR) or thresholds (ImageNet-100-LT)",
                          one_of("thirds", "thresholds"))
    epochs: int = setting(500, "probe epochs", AT_LEAST_1)
    lr: float = setting(1e-2, "probe Adam learning rate, decayed exponentially", POSITIVE)
    final_lr: float = setting(1e-6, "probe learning rate one epoch after the last (BCL's ExponentialLR, gamma = "
                                    "(final_lr / lr)^(1 / epochs))", POSITIVE)
    weight_decay: float = setting(5e-6, "probe weight decay", NON_NEGATIVE)
    batch_size: int = setting(1000, "probe batch size", AT_LEAST_1)
    knn: tuple[int, ...] = setting((1, 10), "k values of the kNN accuracies", ALL_AT_LEAST_1)
    knn_ties: str = setting("lowest-class", "kNN: a tied vote goes to the lowest class id (the TS notebooks' argmax) "
                                            "or to the larger summed similarity (similarity)",
                            one_of("lowest-class", "similarity"))
    ts_train_views: str = setting("augmented", "TS protocol: the split's features (kNN bank, SVMs) from one seeded "
                                               "pass of RandomCrop(pad 4) + flip (augmented, CIFAR notebooks) or "
                                               "clean images (ImageNet-100 notebook)", one_of("augmented", "clean"))
    ts_few_shot_list: str = setting("", "TS protocol: the FS SVM's training list, relative to the recipe's folder, "
                                        "or store:NAME; empty = the notebooks' class-balanced subsample of the split")
    exit: str = setting("backbone", "multi-exit encoders: backbone, sub-network or ensemble (both side by side)",
                        one_of(*EVAL_EXITS))
    supcon_epochs: int = setting(100, "supcon protocol: epochs of the linear classifier", AT_LEAST_1)
    supcon_lr: float = setting(3.0, "supcon protocol: SGD learning rate (momentum 0.9)", POSITIVE)
    supcon_decay_epochs: tuple[int, ...] = setting((60, 80), "supcon protocol: the lr is multiplied by "
                                                             "supcon_decay_rate after each of these epochs",
                                                   ALL_AT_LEAST_1)
    supcon_decay_rate: float = setting(0.1, "supcon protocol: the lr factor at each decay epoch", POSITIVE)
    supcon_weight_decay: float = setting(0.0, "supcon protocol: SGD weight decay", NON_NEGATIVE)
    supcon_batch_size: int = setting(512, "supcon protocol: batch size", AT_LEAST_1)
    supcon_subnet: bool = setting(True, "supcon protocol, multi-exit encoders, eval.exit backbone: also a "
                                        "classifier on the sub-network exit and the two classifiers' mean logits "
                                        "(SelfCon's --subnet)")
    finetune_epochs: int = setting(100, "finetune protocol: most epochs (FlatCLR's fc_epochs)", AT_LEAST_1)
    finetune_lr: float = setting(1.6, "finetune protocol: SGD learning rate, constant (momentum 0.9)", POSITIVE)
    finetune_weight_decay: float = setting(0.0, "finetune protocol: SGD weight decay", NON_NEGATIVE)
    finetune_batch_size: int = setting(4096, "finetune protocol: batch size (training and evaluation)", AT_LEAST_1)
    finetune_patience: int = setting(5, "finetune protocol: stop once this many epochs follow the best one; "
                                        "0 = run every epoch", NON_NEGATIVE)
    finetune_select: str = setting("test", "finetune protocol: the accuracy that picks the reported epoch and "
                                           "stops early: test (FlatCLR's code) or held-out (eval.val_split, "
                                           "which the network then never trains on)", one_of("test", "held-out"))
    finetune_batch_norm: str = setting("train", "finetune protocol: train (FlatCLR's code: batch statistics in "
                                                "training and evaluation) or eval (running statistics when "
                                                "evaluating)", one_of("train", "eval"))
    lotar_epochs: int = setting(90, "lotar protocol: epochs of the fc", AT_LEAST_1)
    lotar_lr: float = setting(3e-4, "lotar protocol: Adam learning rate, constant", POSITIVE)
    lotar_batch_size: int = setting(256, "lotar protocol: batch size (run_lincls.sh)", AT_LEAST_1)
    lotar_stem: str = setting("unpadded", "lotar protocol: the 3x3 stem convolution without padding (as "
                                          "train_lincls.py rebuilds it) or as-trained (padding 1)",
                              one_of("unpadded", "as-trained"))

    def check(self) -> None:
        if self.final_lr > self.lr:
            raise FastltError(f"eval.final_lr: must not exceed eval.lr ({self.lr}), got {self.final_lr}")
        if self.sdclr_crop == "resized" and self.center_crop == 0:
            raise FastltError("eval.sdclr_crop: resized needs eval.center_crop, the side of the views (224)")
        for every, epochs in (("sdclr_val_every", "sdclr_epochs"),
                              ("sdclr_few_shot_val_every", "sdclr_few_shot_epochs")):
            if getattr(self, every) > getattr(self, epochs):
                raise FastltError(f"eval.{every}: must not exceed eval.{epochs} ({getattr(self, epochs)}), or no "
                                  f"epoch is checked, got {getattr(self, every)}")


# Keys that name index files: relative values are taken relative to the recipe file that sets them,
# and "store:NAME" names the list NAME the data store keeps (``with_store_lists``).
RECIPE_RELATIVE_PATHS = {"data": ("split",), "eval": ("train_split", "val_split", "shot_lists", "sdclr_few_shot_list",
                                                      "ts_few_shot_list")}


@dataclass
class Recipe:
    """A whole experiment."""

    data: DataConfig = field(default_factory=DataConfig)
    views: ViewConfig = field(default_factory=ViewConfig)  # validated by the view pipeline itself
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (tuples as lists) for JSON run records and checkpoints."""
        return json_ready(dataclasses.asdict(self))


@dataclass(frozen=True)
class RecipeKey:
    """One recipe key as ``fastlt recipe show`` prints it."""

    key: str  # section.key
    value: Any
    default: Any
    meaning: str


def recipe_keys(recipe: Recipe | None = None) -> list[RecipeKey]:
    """Every key of every section with its value in ``recipe`` (the defaults if None), its default and meaning."""
    recipe = recipe or Recipe()
    keys = []
    for section in dataclasses.fields(Recipe):
        config = getattr(recipe, section.name)
        for key in dataclasses.fields(config):
            if "meaning" not in key.metadata:
                raise ValueError(f"{section.name}.{key.name} has no meaning: give it one where it is defined")
            keys.append(RecipeKey(f"{section.name}.{key.name}", json_ready(getattr(config, key.name)),
                                  json_ready(key.default), key.metadata["meaning"]))
    return keys


def keys_markdown() -> str:
    """The table of recipe keys in docs/recipes.md (tests/test_recipe.py checks the page holds exactly this)."""
    rows = [f"| `{k.key}` | `{json.dumps(k.default)}` | {k.meaning} |" for k in recipe_keys()]
    return "\n".join(["| key | default | meaning |", "|---|---|---|", *rows])


def json_ready(value: Any) -> Any:
    """Tuples to lists, recursively, so the dict round-trips through JSON and TOML."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def find_recipe(name: Path | str) -> Path:
    """A recipe file, or the name of a shipped one: ``cifar100_lt/bcl-d`` is ``pipelines/cifar100_lt/bcl-d.toml``."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_folder("pipelines") / path.with_suffix(".toml")
    if not path.is_absolute() and shipped.is_file():
        return shipped
    if path.suffix == ".toml" or path.is_absolute():
        raise FastltError(f"{path}: recipe file not found")
    hint = suggestion(str(name), shipped_recipes(), "`fastlt recipe list` shows the shipped ones")
    raise FastltError(f"{name}: no such recipe file or shipped recipe ({hint})")


def shipped_recipes() -> dict[str, Path]:
    """The recipes that ship with fastlt, by the name find_recipe takes ("cifar100_lt/bcl-d"), in name order."""
    folder = shipped_folder("pipelines")
    found = {str(p.relative_to(folder).with_suffix("")): p for p in folder.glob("*/*.toml")}
    return dict(sorted(found.items()))


def recipe_purpose(path: Path) -> str:
    """A recipe's first comment line, which states its purpose ("" where the file does not open with a comment).

    ``fastlt recipe list`` shows it, so the purpose is written once, in the file it describes.
    """
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            return line.lstrip("#").strip() if line.startswith("#") else ""
    return ""


def suggestion(name: str, known: Iterable[str], otherwise: str) -> str:
    """What to say about a mistyped name: the closest of ``known`` ("did you mean 'x'?"), else ``otherwise``."""
    close = [repr(match) for match in difflib.get_close_matches(name, list(known), n=3)]
    if not close:
        return otherwise
    return f"did you mean {', '.join(close[:-1]) + ' or ' if len(close) > 1 else ''}{close[-1]}?"


@dataclass(frozen=True)
class Override:
    """A ``section.key=value`` override and what the user typed for it, which its errors name: the ``--set``
    argument itself, or a shortcut option that stands for one (``--device cuda`` sets train.device)."""

    assignment: str
    typed: str


def as_override(item: str | Override) -> Override:
    """A bare ``section.key=value`` string is a ``--set`` argument."""
    return item if isinstance(item, Override) else Override(item, f"--set {item}")


def option_overrides(options: dict[str, tuple[str, Any]]) -> list[Override]:
    """The overrides that shortcut options stand for, {"--device": ("train.device", "cuda")}, each named as the
    user typed it (``--device cuda``); an option not given (None) sets nothing."""
    return [Override(f"{key}={json.dumps(value)}", f"{option} {value}")
            for option, (key, value) in options.items() if value is not None]


def load_recipe(path: Path | str, overrides: Sequence[str | Override] = ()) -> Recipe:
    """Read a TOML recipe (following ``extends``) and apply ``section.key=value`` overrides.

    Every error names the file, or the option the user typed for the value, it comes from.
    """
    path = Path(path)
    return recipe_with_overrides(read_recipe_tables(path), overrides, str(path))


def read_recipe_tables(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw tables of a recipe; ``extends = "other.toml"`` (relative to this file) is read
    first and this file's tables are laid over it, key by key.

    Relative file names in RECIPE_RELATIVE_PATHS are made absolute against the folder of the
    file that sets them, so a recipe works from any current folder and from an installed package.
    """
    if path.resolve() in _seen:
        raise FastltError(f"{path}: 'extends' forms a cycle")
    text = read_text(path, missing=f"{path}: recipe file not found")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise FastltError(f"{path}: not valid TOML ({error})") from None
    for section, keys in RECIPE_RELATIVE_PATHS.items():
        table = raw.get(section)
        for key in keys:
            value = table.get(key) if isinstance(table, dict) else None
            if isinstance(value, str) and value and not value.startswith(STORE_LIST):
                table[key] = str((path.parent / value).resolve())
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str):
        raise FastltError(f"{path}: 'extends' must be a file name")
    merged = read_recipe_tables(path.parent / base_name, (*_seen, path.resolve()))
    for section, table in raw.items():
        if isinstance(table, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **table}
        else:
            merged[section] = table
    return merged


def with_store_lists(recipe: Recipe, list_file: Callable[[str], Path]) -> Recipe:
    """``recipe`` with every "store:NAME" index-file value replaced by the file ``list_file(NAME)``
    (``Store.list_file`` of the run's store). Runs record the unresolved recipe, so a moved store
    is found again."""
    sections = {}
    for section, keys in RECIPE_RELATIVE_PATHS.items():
        config = getattr(recipe, section)
        named = {key: getattr(config, key) for key in keys if getattr(config, key).startswith(STORE_LIST)}
        if named:
            files = {key: str(list_file(value[len(STORE_LIST):])) for key, value in named.items()}
            sections[section] = dataclasses.replace(config, **files)
    return dataclasses.replace(recipe, **sections)


def recipe_with_overrides(raw: dict[str, Any], overrides: Sequence[str | Override], source: str) -> Recipe:
    """Apply ``section.key=value`` overrides to a raw recipe dict, then validate it.

    A bad overridden value is reported against what the user typed for it (``--set ...``, ``--device ...``),
    not the recipe file.
    """
    origins = {}
    for override in map(as_override, overrides):
        origins[apply_override(raw, override)] = override.typed
    return recipe_from_dict(raw, source=source, origins=origins)


def recipe_from_dict(raw: dict[str, Any], source: str, origins: dict[tuple[str, str], str] | None = None) -> Recipe:
    """Build a Recipe from nested dicts, rejecting unknown sections/keys, wrong types and out-of-range values.

    origins maps (section, key) to where a value came from when that is not ``source``.
    """
    origins = origins or {}
    sections = {f.name: f for f in dataclasses.fields(Recipe)}
    for name, table in raw.items():
        where = next((origin for (section, _), origin in origins.items() if section == name), source)
        if name not in sections:
            hint = suggestion(name, sections, "expected one of " + ", ".join(sections))
            raise FastltError(f"{where}: unknown section {name!r} ({hint})")
        if not isinstance(table, dict):
            raise FastltError(f"{where}: [{name}] must be a table")
    hints_of_recipe = typing.get_type_hints(Recipe)
    built = {
        name: _build_section(hints_of_recipe[name], raw.get(name, {}), source, name, origins)
        for name in sections
    }
    return Recipe(**built)


def _build_section(config_type: type, table: dict[str, Any], source: str, section: str,
                   origins: dict[tuple[str, str], str]) -> Any:
    """One table: keys checked against the dataclass, values against its type hints and valid
    ranges; the dataclass's own checks (ViewConfig's ranges, ``check``) are reported too."""
    hints = typing.get_type_hints(config_type)
    rules = {f.name: f.metadata for f in dataclasses.fields(config_type)}
    values = {}
    for key, value in table.items():
        where = f"{origins.get((section, key), source)}: {section}.{key}"
        if key not in hints:
            raise FastltError(f"{where}: unknown key ({suggestion(key, hints, '`fastlt recipe keys` lists them')})")
        values[key] = _coerce(value, hints[key], where)
        rule = rules[key]
        if "valid" in rule and not rule["valid"](values[key]):
            raise FastltError(f"{where}: must be {rule['expected']}, got {value!r}")
    try:
        config = config_type(**values)
        if hasattr(config, "check"):
            config.check()
    except FastltError as error:
        overridden = [origin for (name, _), origin in origins.items() if name == section]
        raise FastltError(f"{overridden[0] if overridden else source}: {error}") from None
    return config


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check value against a simple type hint (bool, int, float, str, fixed tuples, unions)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, where)
            except FastltError:
                continue
        raise FastltError(f"{where}: expected {hint}, got {value!r}")
    if origin is tuple:
        item_types = typing.get_args(hint)
        if len(item_types) == 2 and item_types[1] is Ellipsis:
            if not isinstance(value, (list, tuple)):
                raise FastltError(f"{where}: expected a list, got {value!r}")
            return tuple(_coerce(item, item_types[0], where) for item in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise FastltError(f"{where}: expected a list of {len(item_types)} numbers, got {value!r}")
        return tuple(_coerce(item, item_type, where) for item, item_type in zip(value, item_types))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is type(None):
        if value is None:
            return None
    else:
        raise TypeError(f"unsupported recipe type {hint} at {where}")
    raise FastltError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def apply_override(raw: dict[str, Any], override: Override) -> tuple[str, str]:
    """Set raw[section][key] from 'section.key=value' (value is TOML; bare words are strings); returns (section, key)."""
    dotted, equals, text = override.assignment.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not (equals and dot and section and key):
        raise FastltError(f"{override.typed}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        raise FastltError(f"{override.typed}: [{section}] is not a table")
    table[key] = value
    return section, key
