"""Export a run's pretrained backbone as a torchvision ResNet state dict, to use fastlt weights elsewhere.

fastlt's ResNet and torchvision's compute the same function for the standard width (64),
but name their layers differently, keep the input normalisation in different places, and
(SDCLR) fastlt may keep two batch-norm copies per layer. ``export_torchvision`` writes one
file that ``torch.load(FILE, weights_only=True)`` reads without running code:

    {
      "format": "fastlt-torchvision-resnet", "version": 1,
      "arch": "resnet18" | "resnet34" | "resnet50",
      "stem": "cifar" | "imagenet",
      "feature_dim": 512 | 2048,
      "state_dict": {torchvision key: tensor},   # torchvision's keys exactly, without fc.*
      "mean": [r, g, b], "std": [r, g, b],       # normalise float RGB in [0, 1] with these first
      "fastlt": {"version", "run", "checkpoint", "checkpoint_sha256", "epoch", "method", "encoder", "exit"},
    }

Load it with ``model = torchvision_resnet(arch, stem); model.load_state_dict(sd)`` (strict):
the helper sets ``fc = nn.Identity()`` (the classifier is not part of a self-supervised
backbone), and for the CIFAR stem replaces ``conv1`` with a 3x3 stride-1 convolution and
``maxpool`` with ``nn.Identity()``. The model then maps normalised images to pooled features.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

import fastlt
from fastlt.errors import FastltError
from fastlt.evaluate.protocol import pretrained_backbone, read_checkpoint, run_folder_of
from fastlt.files import check_free, file_digest, replace_atomically
from fastlt.methods import resolve_axes
from fastlt.methods.sdclr import DenseBranch
from fastlt.models.multi_exit import BackboneExit
from fastlt.models.resnet import ARCHITECTURES, ResNet
from fastlt.models.self_damaging import DENSE, DualBatchNorm
from fastlt.recipe import recipe_from_dict

FORMAT = "fastlt-torchvision-resnet"
VERSION = 1
STANDARD_WIDTH = 64  # torchvision's ResNets have 64 channels in the first stage, and no width setting
BLOCK_LAYERS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")  # torchvision's names, shared by fastlt's blocks
STEMS = ("cifar", "imagenet")


def torchvision_resnet(arch: str, stem: str = "cifar") -> torchvision.models.ResNet:
    """torchvision's ``arch`` changed to fastlt's backbone: ``fc`` = Identity, and for the CIFAR stem a
    3x3 stride-1 ``conv1`` (padding 1, no bias) and ``maxpool`` = Identity. Random weights (load an export)."""
    if arch not in ARCHITECTURES:
        raise FastltError(f"arch: unknown architecture {arch!r} (expected one of {sorted(ARCHITECTURES)})")
    if stem not in STEMS:
        raise FastltError(f"stem: unknown stem {stem!r} (expected 'cifar' or 'imagenet')")
    model = getattr(torchvision.models, arch)(weights=None)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, STANDARD_WIDTH, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


def _dense_norm(module: nn.Module) -> nn.Module:
    """The batch norm the dense branch computes with: SDCLR's copy DENSE (0), else the layer itself."""
    return module.copies[DENSE] if isinstance(module, DualBatchNorm) else module


def _named_layers(backbone: ResNet) -> list[tuple[str, nn.Module]]:
    """(torchvision name, fastlt layer) for every convolution and batch norm, in network order.

    fastlt's stem.0 / stem.1 are torchvision's conv1 / bn1 and a block's "shortcut" its
    "downsample"; block layers share their names.
    """
    layers = [("conv1", backbone.stem[0]), ("bn1", _dense_norm(backbone.stem[1]))]
    for stage_index in range(1, 5):
        for block_index, block in enumerate(getattr(backbone, f"layer{stage_index}")):
            prefix = f"layer{stage_index}.{block_index}"
            layers += [(f"{prefix}.{name}", _dense_norm(getattr(block, name)))
                       for name in BLOCK_LAYERS if hasattr(block, name)]
            if isinstance(block.shortcut, nn.Sequential):
                conv, norm = block.shortcut
                layers += [(f"{prefix}.downsample.0", conv), (f"{prefix}.downsample.1", _dense_norm(norm))]
    return layers


def torchvision_state_dict(backbone: ResNet) -> dict[str, Tensor]:
    """The dense weights of a fastlt ResNet under torchvision's keys (fc excluded).

    A convolution gives its weight only: the dense branch of a masked convolution ignores
    its pruning mask. A batch norm gives its whole state (affine, running statistics,
    num_batches_tracked); tensors are contiguous CPU copies.
    """
    state: dict[str, Tensor] = {}
    for name, layer in _named_layers(backbone):
        if isinstance(layer, nn.Conv2d):
            if layer.bias is not None:
                raise FastltError(f"{name}: a convolution with a bias has no place in torchvision's ResNet")
            entries = {"weight": layer.weight}
        elif isinstance(layer, nn.BatchNorm2d):
            entries = layer.state_dict()
        else:
            raise FastltError(f"{name}: {type(layer).__name__} has no torchvision counterpart")
        for key, value in entries.items():
            state[f"{name}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
    return state


def _as_list(values: Tensor) -> list[float]:
    """A float32 buffer as the shortest decimals that give back the same float32 values (0.485, not 0.48500001)."""
    return [float(np.format_float_positional(v, unique=True)) for v in values.detach().cpu().flatten().numpy()]


def _resnet_of(extractor: nn.Module) -> ResNet:
    """The ResNet behind the backbone exit (SDCLR's DenseBranch wraps it to hold the switch on DENSE; SelfCon's
    BackboneExit keeps the whole multi-exit encoder)."""
    module = extractor
    if isinstance(extractor, DenseBranch):
        module = extractor.backbone
    elif isinstance(extractor, BackboneExit):
        module = extractor.encoder.backbone
    if not isinstance(module, ResNet):
        raise FastltError(f"backbone: {type(module).__name__} is not a ResNet, so it has no torchvision form")
    return module


@torch.no_grad()
def _check_same_features(extractor: nn.Module, model: nn.Module, mean: list[float], std: list[float],
                         where: str) -> None:
    """Guard against a silent mismatch: both models give the same features on one random batch (eval mode).

    The tolerance is relative to the largest feature: a briefly trained network can have
    features of any scale, and the two differ only by floating-point rounding.
    """
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    extractor.eval(), model.eval()
    ours = extractor(images).float()
    theirs = model((images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    difference = (ours - theirs).abs().max().item()
    if not difference <= 1e-4 * ours.abs().max().item() + 1e-5:
        raise FastltError(f"{where}: the torchvision model does not reproduce fastlt's features "
                          f"(max difference {difference:.3g}); nothing written")


def export_torchvision(target: Path, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the backbone of a run folder or checkpoint as a torchvision ResNet export to ``out``; return it.

    Only the backbone exit is exported (a multi-exit encoder's sub-network is not), SDCLR's
    with the dense branch's batch norms. The run must be standard width (64). Inputs are
    checked and the model's features compared with torchvision's before anything is written;
    ``out`` is written atomically and never replaced unless ``overwrite``.
    """
    target, out = Path(target), Path(out)
    if out.is_dir():
        raise FastltError(f"{out}: is a folder; --out takes a file name")
    checkpoint, payload = read_checkpoint(target)
    if out.exists() and out.resolve() == checkpoint.resolve():
        raise FastltError(f"{out}: is the checkpoint being exported; choose another --out")
    check_free([out], overwrite)
    recipe = recipe_from_dict(payload["recipe"], source=f"{checkpoint} (recipe)")
    run = run_folder_of(checkpoint)
    model_config = recipe.model
    if model_config.width != STANDARD_WIDTH:
        raise FastltError(f"{run}: model.width is {model_config.width}; torchvision's ResNets have width "
                          f"{STANDARD_WIDTH} only, so this run cannot be exported")
    extractor = pretrained_backbone(payload, recipe, int(payload["data"]["count"]), checkpoint)
    backbone = _resnet_of(extractor)
    mean, std = _as_list(backbone.normalize.mean), _as_list(backbone.normalize.std)
    state = torchvision_state_dict(backbone)
    model = torchvision_resnet(model_config.arch, model_config.stem)
    model.load_state_dict(state, strict=True)
    _check_same_features(extractor, model, mean, std, str(run))
    encoder = resolve_axes(recipe).encoder
    exported = {
        "format": FORMAT,
        "version": VERSION,
        "arch": model_config.arch,
        "stem": model_config.stem,
        "feature_dim": int(backbone.feature_dim),
        "state_dict": state,
        "mean": mean,
        "std": std,
        "fastlt": {
            "version": fastlt.__version__,
            "run": str(run),
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": file_digest(checkpoint),
            "epoch": int(payload["epoch"]),
            "method": recipe.method.name,
            "encoder": f"{encoder} (dense branch, batch-norm copy {DENSE})" if encoder == "self-damaging" else encoder,
            "exit": "backbone",
        },
    }
    replace_atomically(out, lambda handle: torch.save(exported, handle))
    return exported
