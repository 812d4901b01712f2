"""Experiment recipes: TOML files with one table per stage, validated against typed defaults.

A recipe names everything a run depends on (data, views, model, method, optimiser,
training loop). Unknown keys and wrong types are errors that name the file and the
key, so a typo never silently falls back to a default. ``--set section.key=value``
overrides are parsed as TOML values and checked the same way.
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastlt.augment.views import ViewConfig
from fastlt.errors import FastltError


@dataclass
class DataConfig:
    """Which store to train on and which of its samples (split file or all of the part)."""

    store: str = ""
    part: str = "train"
    split: str = ""  # SDCLR-format .npy of indices into the part; "" = every sample


@dataclass
class ModelConfig:
    """Backbone and projection head."""

    arch: str = "resnet18"
    stem: str = "cifar"
    width: int = 64
    projector_hidden: int = 512
    projector_out: int = 128
    projector_layers: int = 2


@dataclass
class MethodConfig:
    """A method preset, optionally changed on any axis, and the settings of each axis.

    Presets: simclr = plain + fixed, sdclr = self-damaging + fixed, bcl-i = plain + bcl-i,
    bcl-d = self-damaging + bcl-d. Setting ``encoder`` or ``view_strength`` overrides the
    preset's choice on that axis, so e.g. SDCLR with BCL-I views is one line.
    """

    name: str = "simclr"
    encoder: str = ""  # plain | self-damaging ("" = the preset's)
    view_strength: str = ""  # fixed | bcl-i | bcl-d ("" = the preset's)
    temperature: float = 0.2
    pruning_ratio: float = 0.9  # self-damaging: fraction of convolution weights pruned
    boost_momentum: float = 0.97  # memorisation boost: beta of the per-sample momentum loss


@dataclass
class OptimConfig:
    """SGD with per-iteration linear warm-up then cosine decay."""

    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 5e-4
    exclude_bn_bias: bool = False  # no weight decay on BN parameters and biases
    warmup_epochs: float = 10.0
    final_lr: float = 1e-6


@dataclass
class TrainConfig:
    """The loop: length, batch, precision, compilation, device and where the run folder goes."""

    epochs: int = 2000
    batch_size: int = 512
    seed: int = 1
    drop_last: bool = True
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    compile: str = "auto"  # auto (on for CUDA) | on | off
    channels_last: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "runs"
    name: str = ""  # run folder name; "" = recipe stem + timestamp
    log_every: int = 50  # steps between reads of the device-side loss accumulator
    progress: bool = True


@dataclass
class EvalConfig:
    """Linear evaluation (BCL protocol by default, REFERENCE.md section 8) and kNN."""

    train_split: str = ""  # indices into the train part for the probe; "" = the whole part
    test_part: str = "test"
    groups: str = "thirds"  # many/medium/few rule: thirds (CIFAR) | thresholds (ImageNet-100-LT)
    epochs: int = 500
    lr: float = 1e-2
    final_lr: float = 1e-6
    weight_decay: float = 5e-6
    batch_size: int = 1000
    knn: tuple[int, ...] = (1, 10)


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


def json_ready(value: Any) -> Any:
    """Tuples to lists, recursively, so the dict round-trips through JSON and TOML."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def load_recipe(path: Path | str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a TOML recipe (following ``extends``) and apply ``section.key=value`` overrides.

    Every error names the file it comes from.
    """
    path = Path(path)
    return recipe_with_overrides(read_recipe_tables(path), overrides, str(path))


def read_recipe_tables(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw tables of a recipe; ``extends = "other.toml"`` (relative to this file) is read
    first and this file's tables are laid over it, key by key."""
    if path.resolve() in _seen:
        raise FastltError(f"{path}: 'extends' forms a cycle")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FastltError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FastltError(f"{path}: cannot read recipe ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise FastltError(f"{path}: not valid TOML ({error})") from None
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


def recipe_with_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> Recipe:
    """Apply ``section.key=value`` overrides to a raw recipe dict, then validate it."""
    for override in overrides:
        apply_override(raw, override, source)
    return recipe_from_dict(raw, source=source)


def recipe_from_dict(raw: dict[str, Any], source: str) -> Recipe:
    """Build a Recipe from nested dicts, rejecting unknown sections/keys and wrong types."""
    sections = {f.name: f for f in dataclasses.fields(Recipe)}
    built = {}
    for name, table in raw.items():
        if name not in sections:
            raise FastltError(f"{source}: unknown section [{name}] (expected one of {sorted(sections)})")
        if not isinstance(table, dict):
            raise FastltError(f"{source}: [{name}] must be a table")
    hints_of_recipe = typing.get_type_hints(Recipe)
    for name in sections:
        config_type = hints_of_recipe[name]
        built[name] = _build_section(config_type, raw.get(name, {}), source, name)
    return Recipe(**built)


def _build_section(config_type: type, table: dict[str, Any], source: str, section: str) -> Any:
    """One table: keys checked against the dataclass, values against its type hints; the
    dataclass's own checks (e.g. ViewConfig's ranges) are reported against the file too."""
    hints = typing.get_type_hints(config_type)
    values = {}
    for key, value in table.items():
        if key not in hints:
            raise FastltError(f"{source}: {section}.{key}: unknown key (expected one of {sorted(hints)})")
        values[key] = _coerce(value, hints[key], f"{source}: {section}.{key}")
    try:
        return config_type(**values)
    except FastltError as error:
        raise FastltError(f"{source}: {error}") from None


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


def apply_override(raw: dict[str, Any], override: str, source: str) -> None:
    """Set raw[section][key] from 'section.key=value'; value is TOML (bare words are strings)."""
    if "=" not in override or "." not in override.split("=", 1)[0]:
        raise FastltError(f"--set {override!r}: expected section.key=value")
    dotted, text = override.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        raise FastltError(f"{source}: [{section}] must be a table")
    table[key] = value
