"""Sinkhorn marginals and robustness; spherical k-means recovery and empty-cluster behaviour."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ops.kmeans import kmeans_plus_plus_init, spherical_kmeans
from ops.sinkhorn import sinkhorn

# Every test draws from its own seeded generator (conftest's `rng`, which also seeds the global RNG for the test and
# prints the seed): no test depends on the draws of the tests that ran before it on the same worker.
pytestmark = pytest.mark.usefixtures("rng")


def swav_reference_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's distributed_sinkhorn for one process, verbatim in structure, in float64."""
    q = torch.exp(scores.double() / epsilon).T
    q /= q.sum()
    clusters, batch = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= clusters
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    return (q * batch).T


def cosine_scores(batch: int, clusters: int, generator: torch.Generator) -> torch.Tensor:
    z = F.normalize(torch.randn(batch, 16, generator=generator), dim=1)
    prototypes = F.normalize(torch.randn(clusters, 16, generator=generator), dim=1)
    return z @ prototypes.T


@pytest.mark.parametrize("iterations", [1, 3, 10])
@pytest.mark.parametrize("seed", range(3))
def test_sinkhorn_equals_swav_reference(iterations, seed):
    scores = cosine_scores(32, 10, torch.Generator().manual_seed(seed))
    expected = swav_reference_sinkhorn(scores, 0.05, iterations).float()
    torch.testing.assert_close(sinkhorn(scores, 0.05, iterations), expected, rtol=1e-4, atol=1e-6)


def test_rows_sum_to_one_and_columns_reach_batch_over_k():
    batch, clusters = 60, 12
    scores = cosine_scores(batch, clusters, torch.Generator().manual_seed(0))
    converged = sinkhorn(scores, epsilon=0.5, iterations=200)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(batch))
    torch.testing.assert_close(converged.sum(dim=0), torch.full((clusters,), batch / clusters), rtol=1e-4, atol=1e-4)
    assert (converged >= 0).all()


def test_three_iterations_balance_the_columns_better_than_softmax():
    batch, clusters = 64, 8
    scores = cosine_scores(batch, clusters, torch.Generator().manual_seed(1))
    target = torch.full((clusters,), batch / clusters)
    imbalance_softmax = (sinkhorn(scores, 0.05, 0).sum(0) - target).abs().max()
    imbalance_sinkhorn = (sinkhorn(scores, 0.05, 3).sum(0) - target).abs().max()
    assert imbalance_sinkhorn < 0.5 * imbalance_softmax


def test_zero_iterations_is_exactly_the_softmax():
    """CoKe's clean-image target calls sinkhorn with 0 iterations when balancing is off: it must be the plain softmax
    bit for bit (the log-domain softmax differed in the last bits, enough to move a learning test's seed)."""
    scores = cosine_scores(64, 8, torch.Generator().manual_seed(2))
    assert torch.equal(sinkhorn(scores, 0.1, 0), torch.softmax(scores / 0.1, dim=1))


def _assert_valid_assignment(q: torch.Tensor) -> None:
    assert q.dtype == torch.float32
    assert torch.isfinite(q).all() and (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(q.shape[0]))


def test_finite_with_random_plus_minus_1e4(rng):
    signs = torch.randn(40, 9, generator=rng).sign()
    _assert_valid_assignment(sinkhorn(signs * 1e4))


@pytest.mark.parametrize("value", [0.0, 1e4, -1e4])
def test_all_equal_scores_give_uniform_assignments(value):
    q = sinkhorn(torch.full((20, 5), value))
    torch.testing.assert_close(q, torch.full((20, 5), 0.2))


def test_scores_that_are_row_plus_column_offsets_give_uniform_assignments(rng):
    # exp(a_i + b_k) is a diagonal scaling of the all-ones matrix, which Sinkhorn removes exactly,
    # however huge the offsets: e.g. every sample scoring 1e4 on the same single cluster.
    # Integer offsets and a power-of-two epsilon keep scores / epsilon exact in float32: at 1e5 the
    # spacing of float32 is ~0.01, so inexact inputs would themselves carry a ~1% error.
    a = torch.randint(-10_000, 10_000, (30, 1), generator=rng).float()
    b = torch.randint(-10_000, 10_000, (1, 6), generator=rng).float()
    torch.testing.assert_close(sinkhorn(a + b, epsilon=1 / 16), torch.full((30, 6), 1 / 6))
    one_hot_same_cluster = torch.zeros(30, 6)
    one_hot_same_cluster[:, 2] = 1e4
    torch.testing.assert_close(sinkhorn(one_hot_same_cluster), torch.full((30, 6), 1 / 6))


def test_huge_one_hot_scores_on_balanced_clusters_stay_one_hot(rng):
    batch, clusters = 24, 6
    targets = torch.randperm(batch, generator=rng) % clusters
    scores = F.one_hot(targets, clusters).float() * 1e4
    q = sinkhorn(scores)
    _assert_valid_assignment(q)
    torch.testing.assert_close(q, F.one_hot(targets, clusters).float())


def test_a_cluster_masked_with_minus_inf_gets_no_mass():
    scores = cosine_scores(16, 5, torch.Generator().manual_seed(2))
    scores[:, 3] = float("-inf")
    q = sinkhorn(scores)
    _assert_valid_assignment(q)
    assert (q[:, 3] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_computed_in_float32(dtype):
    scores = cosine_scores(32, 8, torch.Generator().manual_seed(3)).to(dtype)
    q = sinkhorn(scores)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, sinkhorn(scores.float()))
    # 6e4 / 0.05 overflows float16 but not float32.
    huge = torch.full((4, 3), 6e4, dtype=dtype)
    huge[0, 0] = 0
    _assert_valid_assignment(sinkhorn(huge))


def test_sinkhorn_carries_no_gradient(rng):
    scores = torch.randn(8, 4, generator=rng).requires_grad_()
    assert not sinkhorn(scores).requires_grad


def separated_clusters(k: int, per_cluster: int, dim: int, noise: float, generator: torch.Generator):
    centres = F.normalize(torch.randn(k, dim, generator=generator), dim=1)
    truth = torch.arange(k).repeat_interleave(per_cluster)
    features = F.normalize(centres[truth] + noise * torch.randn(k * per_cluster, dim, generator=generator), dim=1)
    return features, truth


def best_matched_accuracy(truth: torch.Tensor, found: torch.Tensor, k: int) -> float:
    confusion = torch.zeros(k, k)
    confusion.index_put_((truth, found), torch.ones(len(truth)), accumulate=True)
    rows, cols = linear_sum_assignment(-confusion.numpy())
    return confusion[rows, cols].sum().item() / len(truth)


def mean_similarity(features, centroids, assignments) -> float:
    return (features * centroids[assignments]).sum(dim=1).mean().item()


@pytest.mark.parametrize("seed", range(3))
def test_kmeans_plus_plus_recovers_separated_clusters(seed):
    generator = torch.Generator().manual_seed(seed)
    features, truth = separated_clusters(6, 50, 16, 0.03, generator)
    # k-means++ may still seed two centres in one cluster; keep the best of a few restarts, as usual.
    runs = [spherical_kmeans(features, 6, 10, generator=generator, init="k-means++") for _ in range(4)]
    centroids, assignments = max(runs, key=lambda run: mean_similarity(features, *run))
    assert best_matched_accuracy(truth, assignments, 6) == 1.0


def test_lloyd_iterations_recover_clusters_from_one_random_row_per_cluster():
    generator = torch.Generator().manual_seed(4)
    features, truth = separated_clusters(5, 40, 8, 0.1, generator)
    one_row_each = torch.stack([features[truth == c][torch.randint(40, (1,), generator=generator)].squeeze(0) for c in range(5)])
    centroids, assignments = spherical_kmeans(features, 5, init=one_row_each)
    assert best_matched_accuracy(truth, assignments, 5) == 1.0


@pytest.mark.parametrize("init", ["random", "k-means++"])
def test_centroids_are_unit_normalised_means_and_assignments_nearest(init, rng):
    features = F.normalize(torch.randn(300, 12, generator=rng), dim=1)
    centroids, assignments = spherical_kmeans(features, 7, iterations=50, generator=torch.Generator().manual_seed(0), init=init)
    assert centroids.shape == (7, 12) and assignments.shape == (300,) and assignments.dtype == torch.int64
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(7))
    torch.testing.assert_close(assignments, (features @ centroids.T).argmax(dim=1))
    # After 50 iterations on 300 points Lloyd's map has reached its fixed point.
    for c in assignments.unique():
        mean_direction = F.normalize(features[assignments == c].sum(dim=0), dim=0)
        torch.testing.assert_close(centroids[c], mean_direction, rtol=1e-4, atol=1e-5)


def test_empty_cluster_keeps_its_previous_centroid(rng):
    features = F.normalize(torch.rand(100, 4, generator=rng) + 0.1, dim=1)  # all in the positive orthant
    unreachable = -F.normalize(torch.ones(4), dim=0)  # the antipode of the data: no row is nearest to it
    init = torch.cat([features[:3], unreachable[None]])
    centroids, assignments = spherical_kmeans(features, 4, iterations=5, init=init)
    assert not (assignments == 3).any()
    torch.testing.assert_close(centroids[3], unreachable)


def test_same_generator_seed_gives_the_same_clustering(rng):
    features = F.normalize(torch.randn(200, 8, generator=rng), dim=1)
    first = spherical_kmeans(features, 5, generator=torch.Generator().manual_seed(7))
    second = spherical_kmeans(features, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_kmeans_plus_plus_on_k_distinct_points_picks_each_once(rng):
    points = F.normalize(torch.randn(9, 5, generator=rng), dim=1)
    chosen = kmeans_plus_plus_init(points, 9, torch.Generator().manual_seed(0))
    matches = (chosen @ points.T).argmax(dim=1)
    assert sorted(matches.tolist()) == list(range(9))


def test_half_precision_features_and_chunked_assignment(rng):
    features = F.normalize(torch.randn(500, 8, generator=rng), dim=1)
    generator_seed = 3
    full = spherical_kmeans(features, 6, generator=torch.Generator().manual_seed(generator_seed))
    chunked = spherical_kmeans(features, 6, generator=torch.Generator().manual_seed(generator_seed), chunk_size=37)
    assert torch.equal(full[1], chunked[1])
    centroids, _ = spherical_kmeans(features.half(), 6, generator=torch.Generator().manual_seed(generator_seed))
    assert centroids.dtype == torch.float32 and torch.isfinite(centroids).all()


def test_k_larger_than_the_memory_is_an_error(rng):
    with pytest.raises(ValueError, match="k must be"):
        spherical_kmeans(torch.randn(3, 2, generator=rng), 4)
