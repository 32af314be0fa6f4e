"""Chunked kNN and Recall@K against brute-force references (full matrices and explicit loops)."""
import math

import pytest
import torch

from ops.knn import cosine_topk, weighted_knn_scores
from ops.retrieval import recall_at_k


def _cosine_matrix(a, b):
    return torch.stack([torch.stack([torch.dot(x, y) / (x.norm() * y.norm()) for y in b]) for x in a])


def _reference_knn_predictions(queries, bank, bank_labels, num_classes, k, temperature):
    sims = _cosine_matrix(queries, bank)
    predictions = []
    for row in sims:
        order = sorted(range(len(row)), key=lambda j: -row[j].item())[:k]
        votes = [0.0] * num_classes
        for j in order:
            votes[int(bank_labels[j])] += math.exp(row[j].item() / temperature)
        predictions.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(predictions)


def _reference_recall(features, labels, k):
    sims = _cosine_matrix(features, features)
    hits = 0
    for i, row in enumerate(sims):
        others = sorted((j for j in range(len(row)) if j != i), key=lambda j: -row[j].item())[:k]
        hits += any(labels[j] == labels[i] for j in others)
    return hits / len(features)


@pytest.mark.parametrize("query_chunk, bank_chunk", [(7, 11), (1000, 100000), (1, 3)])
def test_weighted_knn_equals_brute_force(query_chunk, bank_chunk):
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(90, 16, generator=g), torch.randn(25, 16, generator=g)
    bank_labels = torch.randint(0, 6, (90,), generator=g)
    scores = weighted_knn_scores(queries, bank, bank_labels, 6, ks=(5, 20), temperature=0.07,
                                 query_chunk=query_chunk, bank_chunk=bank_chunk)
    for k in (5, 20):
        expected = _reference_knn_predictions(queries, bank, bank_labels, 6, k, 0.07)
        assert torch.equal(scores[k].argmax(1), expected)


def test_vote_scores_are_exp_weighted_sums():
    g = torch.Generator().manual_seed(1)
    bank, queries = torch.randn(40, 8, generator=g), torch.randn(5, 8, generator=g)
    labels = torch.randint(0, 3, (40,), generator=g)
    scores = weighted_knn_scores(queries, bank, labels, 3, ks=(40,), temperature=0.5)[40]
    sims = _cosine_matrix(queries, bank)
    expected = torch.stack([torch.stack([(sims[i, labels == c] / 0.5).exp().sum() for c in range(3)]) for i in range(5)])
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("query_chunk, bank_chunk", [(9, 13), (1000, 100000)])
def test_cosine_topk_leave_one_out_never_returns_self(query_chunk, bank_chunk):
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(2))
    sims, ids = cosine_topk(x, x, 10, exclude_self=True, query_chunk=query_chunk, bank_chunk=bank_chunk)
    assert not (ids == torch.arange(50)[:, None]).any()
    full = _cosine_matrix(x, x).fill_diagonal_(-2.0)
    torch.testing.assert_close(sims, full.topk(10, dim=1).values, rtol=1e-5, atol=1e-5)
    assert (sims[:, :-1] >= sims[:, 1:]).all()


@pytest.mark.parametrize("query_chunk, bank_chunk", [(6, 17), (1000, 100000)])
def test_recall_at_k_equals_brute_force(query_chunk, bank_chunk):
    g = torch.Generator().manual_seed(3)
    features = torch.randn(60, 12, generator=g)
    labels = torch.randint(0, 5, (60,), generator=g)
    recall = recall_at_k(features, labels, ks=(1, 2, 5, 10), query_chunk=query_chunk, bank_chunk=bank_chunk)
    for k in (1, 2, 5, 10):
        assert recall[k] == pytest.approx(_reference_recall(features, labels, k))


def test_k_larger_than_the_bank_is_refused():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k must be"):
        cosine_topk(x, x, 5, exclude_self=True)
