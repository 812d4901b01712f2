"""Cosine kNN against scikit-learn (k=1) and a direct numpy vote with the same tie rule (k=10)."""
import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from fastlt.errors import FastltError
from fastlt.evaluate.knn import knn_predict


def numpy_vote(train, train_labels, test, k, num_classes):
    """Per test sample: the k largest cosine similarities, most votes, then largest summed similarity, then lowest id."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    predictions, vote_ties = [], 0
    for query in test:
        similarity = train @ (query / np.linalg.norm(query))
        nearest = np.argsort(-similarity)[:k]
        votes = np.bincount(train_labels[nearest], minlength=num_classes)
        summed = np.bincount(train_labels[nearest], weights=similarity[nearest], minlength=num_classes)
        leaders = np.flatnonzero(votes == votes.max())
        vote_ties += len(leaders) > 1
        predictions.append(leaders[np.argmax(summed[leaders])])
    return np.array(predictions), vote_ties


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 8)).astype(np.float32)
    labels = rng.integers(0, 6, size=300)
    train += 0.8 * np.eye(6, 8, dtype=np.float32)[labels]  # some class structure, plenty of disagreement
    test = rng.normal(size=(90, 8)).astype(np.float32)
    return train, labels, test


def test_k1_matches_sklearn_cosine(data):
    train, labels, test = data
    expected = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute").fit(train, labels).predict(test)
    predicted = knn_predict(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(test), 1, 6)
    assert predicted.dtype == torch.long
    np.testing.assert_array_equal(predicted.numpy(), expected)


def test_k10_matches_numpy_vote_including_ties(data):
    train, labels, test = data
    expected, vote_ties = numpy_vote(train, labels, test, 10, 6)
    assert vote_ties >= 5  # the tie rule is really exercised
    predicted = knn_predict(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(test), 10, 6)
    np.testing.assert_array_equal(predicted.numpy(), expected)


def test_chunking_does_not_change_results(data):
    train, labels, test = (torch.from_numpy(a) for a in data)
    whole = knn_predict(train, labels, test, 10, 6, chunk_size=1024)
    for chunk_size in (1, 7, 89):
        assert torch.equal(knn_predict(train, labels, test, 10, 6, chunk_size=chunk_size), whole)


def test_vote_tie_goes_to_larger_summed_similarity():
    # Query along x; class 0 at 10 and 50 degrees, class 1 at 20 and 30 degrees (scaled, so only angles count).
    # Votes tie 2-2; class 0 has the single nearest neighbour and the lower id, class 1 the larger sum.
    angles = np.radians([10, 50, 20, 30])
    train = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], axis=1) * [[1.0], [3.0], [0.5], [2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert math.cos(angles[2]) + math.cos(angles[3]) > math.cos(angles[0]) + math.cos(angles[1])
    assert knn_predict(train, labels, torch.tensor([[2.0, 0.0]]), 4, 2).tolist() == [1]
    assert knn_predict(train, labels, torch.tensor([[2.0, 0.0]]), 1, 2).tolist() == [0]


def test_k_outside_training_set_size_is_an_error(data):
    train, labels, test = (torch.from_numpy(a) for a in data)
    for k in (0, 301):
        with pytest.raises(FastltError, match="knn k"):
            knn_predict(train, labels, test, k, 6)
