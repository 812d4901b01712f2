"""Cosine kNN against the Temperature-Schedules notebooks' own code (transcribed), scikit-learn (k=1) and a
direct numpy vote for fastlt's summed-similarity tie rule."""
import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from fastlt.errors import FastltError
from fastlt.measure.knn import knn_predict


def summed_similarity_vote(train, train_labels, test, k, num_classes):
    """Per test sample: the k largest cosine similarities, most votes, then largest summed similarity, then lowest id."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    predictions = []
    for query in test:
        similarity = train @ (query / np.linalg.norm(query))
        nearest = np.argsort(-similarity)[:k]
        votes = np.bincount(train_labels[nearest], minlength=num_classes)
        summed = np.bincount(train_labels[nearest], weights=similarity[nearest], minlength=num_classes)
        leaders = np.flatnonzero(votes == votes.max())
        predictions.append(leaders[np.argmax(summed[leaders])])
    return np.array(predictions)


def vote_ties(train, train_labels, test, k, num_classes):
    """How many test samples have two or more classes sharing the most votes among their k nearest."""
    similarity = (test / np.linalg.norm(test, axis=1, keepdims=True)) @ (
        train / np.linalg.norm(train, axis=1, keepdims=True)).T
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    votes = np.stack([np.bincount(row, minlength=num_classes) for row in train_labels[nearest]])
    return int(((votes == votes.max(1, keepdims=True)).sum(1) > 1).sum())


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 8)).astype(np.float32)
    labels = rng.integers(0, 6, size=300)
    train += 0.8 * np.eye(6, 8, dtype=np.float32)[labels]  # some class structure, plenty of disagreement
    test = rng.normal(size=(120, 8)).astype(np.float32)
    test_labels = rng.integers(0, 6, size=120)
    test += 0.8 * np.eye(6, 8, dtype=np.float32)[test_labels]
    return train, labels, test, test_labels


@pytest.mark.parametrize("k", [1, 2, 4, 10])
def test_votes_as_the_ts_notebook_with_many_ties(data, k, ts_notebook):
    train, labels, test, test_labels = data
    class_acc, expected = ts_notebook.knn(train, labels, test, test_labels, 6, k)
    predicted = knn_predict(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(test), k, 6)
    assert predicted.dtype == torch.long
    np.testing.assert_array_equal(predicted.numpy(), expected)
    per_class = [np.mean(predicted.numpy()[test_labels == c] == c) for c in range(6)]
    np.testing.assert_allclose(per_class, class_acc)
    if k > 1:  # the lowest-class rule is really exercised: a sixth or more of the votes tie
        assert vote_ties(train, labels, test, k, 6) >= 20
        other = summed_similarity_vote(train, labels, test, k, 6)
        assert (other != expected).sum() >= 5  # the two tie rules disagree, so this test tells them apart


def test_k1_matches_sklearn_cosine_under_both_tie_rules(data):
    train, labels, test, _ = data
    expected = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute").fit(train, labels).predict(test)
    for ties in ("lowest-class", "similarity"):
        predicted = knn_predict(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(test), 1, 6, ties)
        np.testing.assert_array_equal(predicted.numpy(), expected)


@pytest.mark.parametrize("k", [2, 10])
def test_similarity_rule_matches_numpy_vote(data, k):
    train, labels, test, _ = data
    expected = summed_similarity_vote(train, labels, test, k, 6)
    predicted = knn_predict(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(test), k, 6,
                            ties="similarity")
    np.testing.assert_array_equal(predicted.numpy(), expected)


def test_chunking_does_not_change_results(data):
    train, labels, test, _ = (torch.from_numpy(a) for a in data)
    for ties in ("lowest-class", "similarity"):
        whole = knn_predict(train, labels, test, 10, 6, ties, chunk_size=1024)
        for chunk_size in (1, 7, 89):
            assert torch.equal(knn_predict(train, labels, test, 10, 6, ties, chunk_size=chunk_size), whole)


def test_a_tied_vote_goes_to_the_lowest_class_or_to_the_larger_summed_similarity():
    # Query along x; class 0 at 10 and 50 degrees, class 1 at 20 and 30 degrees (scaled, so only angles count).
    # Votes tie 2-2; class 0 has the single nearest neighbour and the lower id, class 1 the larger sum.
    angles = np.radians([10, 50, 20, 30])
    train = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], axis=1) * [[1.0], [3.0], [0.5], [2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert math.cos(angles[2]) + math.cos(angles[3]) > math.cos(angles[0]) + math.cos(angles[1])
    query = torch.tensor([[2.0, 0.0]])
    assert knn_predict(train, labels, query, 4, 2).tolist() == [0]
    assert knn_predict(train, labels, query, 4, 2, ties="similarity").tolist() == [1]
    assert knn_predict(train, labels + 1, query, 4, 3).tolist() == [1]  # the lowest tied id, not id 0
    assert knn_predict(train, labels, query, 1, 2, ties="similarity").tolist() == [0]


def test_bad_k_and_tie_rule_are_errors(data):
    train, labels, test, _ = (torch.from_numpy(a) for a in data)
    for k in (0, 301):
        with pytest.raises(FastltError, match="knn k"):
            knn_predict(train, labels, test, k, 6)
    with pytest.raises(FastltError, match="knn ties: must be one of lowest-class, similarity, got 'votes'"):
        knn_predict(train, labels, test, 3, 6, ties="votes")
