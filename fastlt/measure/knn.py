"""k-nearest-neighbour classification of frozen features by cosine similarity.

A parameter-free check of the representation (docs/evaluation.md reports kNN@1 and
kNN@10): it needs no training, so it also shows whether a linear probe's result comes
from the features or from the probe. The vote is the Temperature-Schedules notebooks'
(the only reference code with a kNN): the k nearest vote once each, unweighted.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastlt.errors import FastltError

KNN_TIES = ("lowest-class", "similarity")  # how a tied vote is settled (docs/evaluation.md, kNN)


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    k: int,
    num_classes: int,
    ties: str = "lowest-class",
    chunk_size: int = 1024,
) -> Tensor:
    """Class ids (int64, on the test features' device) by a majority vote of the k most similar training samples.

    Similarity is the dot product of L2-normalised features (cosine; the TS notebooks rank by
    the Euclidean distance of the normalised features, the same order). Each of the k nearest
    gives its class one vote. ``ties`` settles classes with the same number of votes:
    "lowest-class" gives it to the lowest class id (the notebooks' ``np.argmax`` over the vote
    counts); "similarity" to the class whose voters have the larger summed similarity, then
    the lowest id. Which samples count as the k nearest when the k-th similarity is shared
    by several is up to torch.topk. Test samples are processed ``chunk_size`` at a time, so
    memory is chunk_size x N_train, not N_test x N_train.
    """
    if not 1 <= k <= len(train_features):
        raise FastltError(f"knn k: must be in [1, {len(train_features)}] (the training set size), got {k}")
    if ties not in KNN_TIES:
        raise FastltError(f"knn ties: must be one of {', '.join(KNN_TIES)}, got {ties!r}")
    if chunk_size < 1:
        raise FastltError(f"knn chunk_size: must be >= 1, got {chunk_size}")
    train = F.normalize(train_features.float(), dim=1)
    train_labels = train_labels.to(device=train.device, dtype=torch.long)
    predictions = []
    for chunk in test_features.split(chunk_size):
        query = F.normalize(chunk.to(train.device, torch.float32), dim=1)
        similarity, neighbours = (query @ train.t()).topk(k, dim=1)
        neighbour_labels = train_labels[neighbours]
        votes = torch.zeros(len(query), num_classes, device=train.device)
        votes.scatter_add_(1, neighbour_labels, torch.ones_like(similarity))
        if ties == "similarity":  # among the classes with the most votes, the largest summed similarity wins
            summed = torch.zeros_like(votes).scatter_add_(1, neighbour_labels, similarity)
            votes = summed.masked_fill(votes != votes.max(dim=1, keepdim=True).values, float("-inf"))
        predictions.append(votes.argmax(dim=1))  # argmax takes the first (lowest) of equal maxima
    return torch.cat(predictions).to(test_features.device)
