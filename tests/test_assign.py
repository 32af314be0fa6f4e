"""The fused Triton assignment/update (run by the Triton interpreter on the CPU) against the torch reference.

Inputs are random draws from each test's own seeded generator (the `rng` fixture, which prints its seed); outputs
are poisoned before every call.
"""
import importlib
import os

os.environ["TRITON_INTERPRET"] = "1"  # before the first triton kernel is defined

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ops.assign import assign, assign_reference_style, assign_torch, label_histogram, to_global_labels, to_local_labels  # noqa: E402
from ops.coke_update import update_clusters_  # noqa: E402

# Every test draws from its own seeded generator (conftest's `rng`, which also seeds the global RNG for the test and
# prints the seed): no test depends on the draws of the tests that ran before it on the same worker.
pytestmark = pytest.mark.usefixtures("rng")

NEAR_TIE = 1e-6


@pytest.fixture(scope="module")
def triton_ops():
    """ops.assign_triton with interpreted kernels, even if something imported it before TRITON_INTERPRET was set."""
    from triton.runtime.interpreter import InterpretedFunction

    import ops.assign_triton as module

    if not isinstance(module._assign_kernel, InterpretedFunction):
        module = importlib.reload(module)
    return module


def random_problem(dim, head_sizes, num_rows, rng, dtype=torch.float32):
    offsets = torch.tensor([0] + head_sizes).cumsum(0)
    x = F.normalize(torch.randn(num_rows, dim, generator=rng), dim=1).to(dtype)
    centers = F.normalize(torch.randn(int(offsets[-1]), dim, generator=rng), dim=1)
    duals = torch.rand(int(offsets[-1]), generator=rng) * 0.05
    return x, centers, duals, offsets


def random_ranges(offsets, num_rows, rng):
    """Random non-empty [lo, hi) inside every head, as "CoKe with coarse labels" would give."""
    lo_hi = []
    for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        a = torch.randint(lo, hi, (num_rows,), generator=rng)
        b = torch.randint(lo, hi, (num_rows,), generator=rng)
        lo_hi.append(torch.stack([torch.minimum(a, b), torch.maximum(a, b) + 1], dim=1))
    return torch.stack(lo_hi, dim=1)


def exact_scores(x, centers, duals, labels):
    """fp64 score of the given global labels, (B,H)."""
    chosen = centers.double()[labels]
    return torch.einsum("bd,bhd->bh", x.double(), chosen) + duals.double()[labels]


def poisoned_out(num_rows, num_heads, num_clusters):
    return (torch.full((num_rows, num_heads), 987654, dtype=torch.int64),
            torch.full((num_clusters,), -77, dtype=torch.int32),
            torch.full((num_rows, num_heads), float("nan")))


def count_label_mismatches(x, centers, duals, labels, expected):
    """Where the labels differ, require a true near-tie in fp64; return how many differ."""
    differ = labels != expected
    if differ.any():
        gap = (exact_scores(x, centers, duals, labels) - exact_scores(x, centers, duals, expected)).abs()
        assert (gap[differ] < NEAR_TIE).all(), f"labels differ without a near-tie: gaps {gap[differ]}"
    return int(differ.sum())


@pytest.mark.parametrize("dim", [40, 64, 128, 256])  # 40: not a multiple of the D block
@pytest.mark.parametrize("with_ranges", [False, True])
def test_triton_assign_matches_torch(triton_ops, dim, with_ranges, rng):
    num_rows = int(torch.randint(17, 150, (), generator=rng))
    head_sizes = [int(torch.randint(20, 140, (), generator=rng)) for _ in range(int(torch.randint(1, 4, (), generator=rng)))]
    x, centers, duals, offsets = random_problem(dim, head_sizes, num_rows, rng)
    ranges = random_ranges(offsets, num_rows, rng) if with_ranges else None
    out = poisoned_out(num_rows, len(head_sizes), centers.shape[0])

    labels, counts, scores = triton_ops.assign_triton(x, centers, duals, offsets, ranges, return_score=True, out=out)
    expected, expected_counts, expected_scores = assign_torch(
        x, centers, duals, offsets, ranges, max_scores=10**9, return_score=True)

    mismatches = count_label_mismatches(x, centers, duals, labels, expected)
    assert mismatches <= 1
    assert torch.equal(counts, label_histogram(labels, centers.shape[0]))
    if mismatches == 0:
        assert torch.equal(counts, expected_counts)
    assert torch.allclose(scores, expected_scores, atol=1e-5)
    assert torch.allclose(scores.double(), exact_scores(x, centers, duals, labels), atol=1e-5)
    heads = torch.arange(len(head_sizes))
    assert ((labels >= offsets[heads]) & (labels < offsets[heads + 1])).all()
    if with_ranges:
        assert ((labels >= ranges[..., 0]) & (labels < ranges[..., 1])).all()


def test_triton_assign_bf16_input_is_upcast(triton_ops, rng):
    x, centers, duals, offsets = random_problem(128, [70, 33], 90, rng, dtype=torch.bfloat16)
    labels, counts = assign(x, centers, duals, offsets, kernel="triton")
    expected, _ = assign(x, centers, duals, offsets, kernel="torch")
    assert count_label_mismatches(x.float(), centers, duals, labels, expected) <= 1
    assert torch.equal(counts, label_histogram(labels, centers.shape[0]))


def test_ties_go_to_the_lowest_index_in_every_path(triton_ops, rng):
    # Basis-vector rows and centres on a 1/4 grid: every score is exact, whatever the summation order.
    num_rows, dim, num_clusters = 40, 64, 150
    x = torch.eye(dim)[torch.randint(0, dim, (num_rows,), generator=rng)]
    centers = torch.randint(-4, 4, (num_clusters, dim), generator=rng).float() / 4  # all below 1
    for k in (3, 5, 100):  # 100 lies in another tile and in another torch chunk
        centers[k] = 1.0
    duals = torch.zeros(num_clusters)
    offsets = torch.tensor([0, num_clusters])
    for kernel in ("torch", "triton"):
        labels, counts = assign(x, centers, duals, offsets, kernel=kernel, max_scores=7)
        assert (labels == 3).all(), kernel
        assert counts[3] == num_rows
    labels, _ = assign_reference_style(x, centers, duals, offsets)
    assert (labels == 3).all()


def test_empty_range_gives_minus_one_and_no_count(triton_ops, rng):
    x, centers, duals, offsets = random_problem(64, [50, 40], 30, rng)
    ranges = random_ranges(offsets, 30, rng)
    ranges[::3, 1, 1] = ranges[::3, 1, 0]  # rows 0, 3, 6, ... may use nothing in head 1
    for kernel in ("torch", "triton"):
        labels, counts = assign(x, centers, duals, offsets, row_ranges=ranges, kernel=kernel)
        assert (labels[::3, 1] == -1).all(), kernel
        assert (labels[:, 0] >= 0).all()
        assert int(counts.sum()) == 30 + 20


@pytest.mark.parametrize("with_ranges", [False, True])
def test_chunked_torch_equals_unchunked(with_ranges, rng):
    head_sizes = [int(torch.randint(5, 60, (), generator=rng)) for _ in range(3)]
    num_rows = int(torch.randint(1, 80, (), generator=rng))
    x, centers, duals, offsets = random_problem(32, head_sizes, num_rows, rng)
    ranges = random_ranges(offsets, num_rows, rng) if with_ranges else None
    full_labels, full_counts, full_scores = assign_torch(
        x, centers, duals, offsets, ranges, max_scores=10**9, return_score=True)
    for max_scores in (1, 3, min(head_sizes) - 1, 2 * max(head_sizes) + 1, 1000):
        labels, counts, scores = assign_torch(
            x, centers, duals, offsets, ranges, max_scores=max_scores, return_score=True)
        mismatches = count_label_mismatches(x, centers, duals, labels, full_labels)
        assert mismatches <= 1, max_scores
        if mismatches == 0:
            assert torch.equal(counts, full_counts)
        assert torch.allclose(scores, full_scores, atol=1e-6)


def test_reference_style_equals_chunked(rng):
    x, centers, duals, offsets = random_problem(64, [40, 25], 64, rng)
    labels, counts = assign_reference_style(x, centers, duals, offsets)
    expected, expected_counts = assign_torch(x, centers, duals, offsets, max_scores=100)
    assert count_label_mismatches(x, centers, duals, labels, expected) <= 1
    assert torch.equal(counts, label_histogram(labels, centers.shape[0]))


def test_local_global_label_round_trip():
    offsets = torch.tensor([0, 4, 10])
    local = torch.tensor([[3, 0], [-1, 5]])
    assert torch.equal(to_global_labels(local, offsets), torch.tensor([[3, 4], [-1, 9]]))
    assert torch.equal(to_local_labels(to_global_labels(local, offsets), [0, 4, 10]), local)


def test_fp16_is_refused(rng):
    x, centers, duals, offsets = random_problem(16, [5], 4, rng)
    with pytest.raises(TypeError):
        assign(x.half(), centers, duals, offsets)


@pytest.mark.parametrize("dim", [40, 64, 256])
@pytest.mark.parametrize("ratio", [0.4, 1.0])
def test_triton_update_matches_torch(triton_ops, dim, ratio, rng):
    head_sizes = [int(torch.randint(10, 90, (), generator=rng)), int(torch.randint(10, 90, (), generator=rng))]
    num_rows = int(torch.randint(20, 200, (), generator=rng))
    x, centers, duals, offsets = random_problem(dim, head_sizes, num_rows, rng)
    labels, counts = assign(x, centers, duals, offsets, kernel="torch")
    labels[::7, 1] = -1  # rows with no allowed cluster must be ignored
    counts = label_histogram(labels, centers.shape[0])
    counters = torch.randint(0, 4, (centers.shape[0],), generator=rng)  # zeros: first hits replace the centre
    target = ratio / torch.cat([torch.full((k,), float(k)) for k in head_sizes])

    results = {}
    for kernel in ("torch", "triton"):
        state = (centers.clone(), counters.clone(), duals.clone())
        update_clusters_(x, labels, counts, *state, target, dual_lr=20.0, clamp=ratio < 1, kernel=kernel)
        results[kernel] = state
    (c_t, m_t, d_t), (c_k, m_k, d_k) = results["torch"], results["triton"]
    assert torch.allclose(c_t, c_k, atol=1e-5)
    assert torch.equal(m_t, m_k)
    assert torch.allclose(d_t, d_k, atol=1e-5)

    # Against the formulas themselves, cluster by cluster.
    untouched = counts == 0
    assert torch.equal(c_k[untouched], centers[untouched])
    for k in torch.nonzero(~untouched).flatten()[:10].tolist():
        members = x[(labels == k).any(dim=1)]
        m = float(counters[k])
        expected = F.normalize((m * centers[k] + members.sum(0)) / (m + len(members)), dim=0)
        assert torch.allclose(c_k[k], expected, atol=1e-5)
    expected_duals = duals + 20.0 * (target - counts.float() / num_rows)
    if ratio < 1:
        expected_duals = expected_duals.clamp_min(0)
    assert torch.allclose(d_k, expected_duals, atol=1e-5)
    assert torch.equal(m_k, counters + counts)
