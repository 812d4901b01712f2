"""Watching a run beyond its loss: held-out kNN accuracy every few epochs, and an optional TensorBoard log.

A contrastive loss says little about the tail classes. With ``train.monitor_every = N`` the
trainer asks the monitor, after every N-th epoch and after the schedule's last epoch
(``train.epochs``, so a run cut with ``--until-epoch`` and resumed logs the same epochs as an
uninterrupted one), for the kNN accuracy of the backbone's features:

- memory bank: the pretraining split (``data.split``) of the training part;
- queries: ``eval.val_split``, or, when it is empty, the training part's samples outside the
  split (never the test part); a held-out list that overlaps the split is refused;
- features: ``method.feature_extractor(eval.exit)``, eval mode, no augmentation, no gradient,
  the run's autocast (``fastlt.measure.features.extract_features``, which restores every
  module's train flag); one pass over the memory and the queries together;
- k: the first ``eval.knn`` value (1 if the list is empty), voting as ``linear-eval`` does
  (``fastlt.measure.knn.knn_predict``, ties settled by ``eval.knn_ties``);
- numbers: ``fastlt.measure.accuracy.accuracy_report`` with the split's class groups
  (``eval.groups``). ``monitor_knn`` is the mean per-class accuracy: on a class-balanced
  held-out list (the CIFAR val lists) it equals the fraction of queries right, and on an
  imbalanced one (the digits' samples outside the split hold more tail than head images) it
  stays comparable with the balanced test set's overall number and with the three groups,
  which are per-class means too. ``monitor_knn_many`` / ``_medium`` / ``_few`` are the
  groups' mean per-class accuracies. Percent, 2 decimals; None where a group has no query.

The uint8 images of the memory and the queries are copied to the device once, when the run
starts. The monitor draws no random number and changes no parameter or buffer, so a run
trains the same with it on or off and resumes bit for bit either way.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fastlt.data.splits import GROUP_NAMES, held_out_indices
from fastlt.data.store import StorePart
from fastlt.errors import FastltError
from fastlt.measure.accuracy import accuracy_report
from fastlt.measure.features import center_square, extract_features
from fastlt.measure.knn import knn_predict
from fastlt.recipe import Recipe

MONITOR_KEYS = ("monitor_knn", *(f"monitor_knn_{name}" for name in GROUP_NAMES))
TENSORBOARD_FOLDER = "tensorboard"


class Monitor:
    """kNN accuracy of the current backbone on held-out images, overall and per class group."""

    def __init__(self, images: Tensor, labels: Tensor, memory_size: int, num_classes: int,
                 groups: dict[str, np.ndarray], k: int, exit: str, every: int, last_epoch: int, batch_size: int,
                 ties: str = "lowest-class"):
        if not 1 <= k <= memory_size:
            raise FastltError(f"eval.knn: the monitor's k = {k} must be in [1, {memory_size}] "
                              "(the pretraining split's size)")
        self.images = images  # uint8 [memory + queries, H, W, 3] on the device: the memory bank first
        self.labels = labels  # int64 on the device
        self.memory_size = memory_size
        self.num_classes = num_classes
        self.groups = groups
        self.k = k
        self.exit = exit
        self.every = every
        self.last_epoch = last_epoch
        self.batch_size = batch_size
        self.ties = ties

    @classmethod
    def for_recipe(cls, recipe: Recipe, part: StorePart, pretrain_indices: np.ndarray, num_classes: int,
                   groups: dict[str, np.ndarray], device: torch.device) -> Monitor | None:
        """The recipe's monitor with its images on ``device``, or None when ``train.monitor_every`` is 0."""
        if recipe.train.monitor_every == 0:
            return None
        labels = np.asarray(part.labels)
        queries = held_out_indices(recipe.eval.val_split, pretrain_indices, len(labels))
        rows = np.concatenate([np.asarray(pretrain_indices, dtype=np.int64), queries])
        # The evaluation view (eval.center_crop) is cut once here, so the device keeps only what is used.
        nchw = torch.from_numpy(np.ascontiguousarray(part.images[rows])).permute(0, 3, 1, 2)
        images = center_square(nchw, recipe.eval.center_crop).permute(0, 2, 3, 1).contiguous()
        return cls(images.to(device),
                   torch.from_numpy(labels[rows].astype(np.int64)).to(device), len(pretrain_indices), num_classes,
                   groups, recipe.eval.knn[0] if recipe.eval.knn else 1, recipe.eval.exit,
                   recipe.train.monitor_every, recipe.train.epochs, 2 * recipe.train.batch_size, recipe.eval.knn_ties)

    @property
    def label(self) -> str:
        return f"kNN@{self.k}"

    def due(self, epoch: int) -> bool:
        """After every ``monitor_every``-th epoch and after the schedule's last one."""
        return epoch % self.every == 0 or epoch == self.last_epoch

    def epochs(self, first: int, last: int) -> list[int]:
        """The epochs in [first, last] the monitor runs after."""
        return [epoch for epoch in range(first, last + 1) if self.due(epoch)]

    def measure(self, method: nn.Module, autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
        """The monitor's metrics for this moment of training; reads the device once (the predictions)."""
        started = time.perf_counter()
        features = extract_features(method.feature_extractor(self.exit), self.images, self.images.device,
                                    batch_size=self.batch_size, autocast_dtype=autocast_dtype)
        memory, queries = features[: self.memory_size], features[self.memory_size:]
        predictions = knn_predict(memory, self.labels[: self.memory_size], queries, self.k, self.num_classes,
                                  self.ties)
        report = accuracy_report(predictions, self.labels[self.memory_size:], self.num_classes, self.groups)
        values = [report["class_mean"], *(report.get(name) for name in GROUP_NAMES)]
        record: dict[str, Any] = {key: None if value is None else round(value, 2)
                                  for key, value in zip(MONITOR_KEYS, values)}
        record["monitor_seconds"] = round(time.perf_counter() - started, 3)
        return record


def require_tensorboard() -> type:
    """torch's SummaryWriter, or a one-line error saying how to install the optional tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FastltError("train.tensorboard: the tensorboard package is not installed "
                          "(pip install 'fastlt[tensorboard]', or pip install tensorboard)") from None
    return SummaryWriter


class TensorBoardLog:
    """Every number of each metrics.jsonl record as a TensorBoard scalar at step = epoch, in RUN/tensorboard.

    A resumed run purges the events of epochs after its checkpoint (they are trained again),
    as ``keep_metrics_until`` drops their metrics lines.
    """

    def __init__(self, run_dir: Path, epochs_done: int):
        writer_class = require_tensorboard()
        self.writer = writer_class(str(run_dir / TENSORBOARD_FOLDER), purge_step=epochs_done + 1 if epochs_done
                                   else None)

    def write(self, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, global_step=epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
