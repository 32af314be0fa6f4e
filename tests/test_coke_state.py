"""CokeState against a plain per-sample implementation of docs/algorithm.md §1, plus its documented rules."""
import importlib
import io
import os

os.environ["TRITON_INTERPRET"] = "1"  # before the first triton kernel is defined

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ops.assign import assign, to_local_labels  # noqa: E402
from ops.coke_state import CokeState, first_occurrence_rows, partition_clusters  # noqa: E402
from ops.coke_stage2 import EarlierStage2  # noqa: E402


@pytest.fixture(scope="module")
def interpreted_triton():
    from triton.runtime.interpreter import InterpretedFunction

    import ops.assign_triton as module

    if not isinstance(module._assign_kernel, InterpretedFunction):
        importlib.reload(module)


class ReferenceCoke:
    """docs/algorithm.md §1 written out one sample and one cluster at a time, in float64."""

    def __init__(self, centers_per_head, num_instances, ratio, dual_lr):
        self.centers = [c.double().clone() for c in centers_per_head]
        self.prev_centers = [c.clone() for c in self.centers]
        self.duals = [torch.zeros(len(c), dtype=torch.float64) for c in self.centers]
        self.counters = [[0] * len(c) for c in self.centers]
        self.memory = [[-1] * len(self.centers) for _ in range(num_instances)]
        self.ratio, self.dual_lr = ratio, dual_lr

    def step(self, x, ids):
        x = x.double()
        prev = [list(self.memory[i]) for i in ids]  # 5. read before anything is written
        new = [[None] * len(self.centers) for _ in ids]
        for h, (centers, duals) in enumerate(zip(self.centers, self.duals)):
            num_clusters, batch = len(centers), len(ids)
            for row in range(batch):  # 2. all rows against the same rho and C
                scores = [float(x[row] @ centers[k] + duals[k]) for k in range(num_clusters)]
                best = max(range(num_clusters), key=lambda k: (scores[k], -k))
                runner_up = max(s for k, s in enumerate(scores) if k != best)
                assert scores[best] - runner_up > 1e-4, "the fixed trace must be free of near-ties"
                new[row][h] = best
            counts = [sum(1 for row in range(batch) if new[row][h] == k) for k in range(num_clusters)]
            for k in range(num_clusters):  # 3. duals
                stepped = float(duals[k]) + self.dual_lr * (self.ratio / num_clusters - counts[k] / batch)
                duals[k] = max(0.0, stepped) if self.ratio < 1 else stepped
            for k in range(num_clusters):  # 4. running mean over this epoch's members
                if counts[k] == 0:
                    continue
                member_sum = sum(x[row] for row in range(batch) if new[row][h] == k)
                m, n = self.counters[h][k], counts[k]
                centers[k] = F.normalize((m * centers[k] + member_sum) / (m + n), dim=0)
                self.counters[h][k] = m + n
        for row in reversed(range(len(ids))):  # the first copy of a duplicated id wins
            self.memory[ids[row]] = list(new[row])
        return prev

    def end_epoch(self):
        self.prev_centers = [c.clone() for c in self.centers]
        self.counters = [[0] * len(c) for c in self.centers]


def trace_batches(num_instances, dim, batch, epochs):
    """A fixed sequence of (features, ids): a shuffled pass per epoch, the last batch padded with its own ids."""
    generator = torch.Generator().manual_seed(1234)
    features = F.normalize(torch.randn(num_instances, dim, generator=generator), dim=1)
    for _ in range(epochs):
        order = torch.randperm(num_instances, generator=generator)
        order = torch.cat([order, order[len(order) - (-num_instances) % batch:]])
        views = []
        for start in range(0, len(order), batch):
            ids = order[start:start + batch]
            jitter = 0.05 * torch.randn(len(ids), dim, generator=generator)
            views.append((F.normalize(features[ids] + jitter, dim=1), ids))
        yield views


@pytest.mark.parametrize("kernel", ["torch", "triton"])
@pytest.mark.parametrize("ratio", [0.4, 1.0])
def test_state_follows_the_reference_trace(interpreted_triton, kernel, ratio):
    num_instances, dim, heads = 90, 16, [5, 8]
    state = CokeState(num_instances, heads, dim, ratio=ratio, dual_lr=20.0, kernel=kernel, max_scores=11, seed=3)
    reference = ReferenceCoke(state.split_heads(state.centers), num_instances, ratio, 20.0)
    for epoch_views in trace_batches(num_instances, dim, batch=32, epochs=3):
        for x, ids in epoch_views:
            prev = state.step(x, ids)
            assert prev.tolist() == reference.step(x, ids.tolist())
        assert state.label_memory.tolist() == reference.memory
        for h, (c, d) in enumerate(zip(state.split_heads(state.centers), state.split_heads(state.duals))):
            assert torch.allclose(c.double(), reference.centers[h], atol=1e-5)
            assert torch.allclose(d.double(), reference.duals[h], atol=1e-5)
            assert state.cluster_sizes()[h].tolist() == reference.counters[h]
        state.end_epoch()
        reference.end_epoch()
        for c, expected in zip(state.split_heads(state.prev_centers), reference.prev_centers):
            assert torch.allclose(c.double(), expected, atol=1e-5)
        assert int(state.counters.abs().sum()) == 0
    assert int(state.epoch) == 3
    assert (state.label_memory >= 0).all()


def test_initial_state():
    a, b = CokeState(10, [4, 6], 8, seed=5), CokeState(10, [4, 6], 8, seed=5)
    assert torch.equal(a.centers, b.centers)
    assert not torch.equal(a.centers, CokeState(10, [4, 6], 8, seed=6).centers)
    assert torch.allclose(a.centers.norm(dim=1), torch.ones(10))
    assert (a.duals == 0).all() and (a.label_memory == -1).all() and int(a.epoch) == 0


def test_duplicated_ids_write_the_label_of_the_first_copy():
    state = CokeState(20, [6, 4], 8, kernel="torch", seed=1)
    ids = torch.tensor([5, 7, 5, 9, 5, 7])
    x = state.centers[:6].clone()  # row i lands in cluster i of head 0: the copies of 5 and 7 disagree
    before_centers, before_duals = state.centers.clone(), state.duals.clone()
    expected, _ = assign(x, before_centers, before_duals, state.head_offsets, kernel="torch")
    expected = to_local_labels(expected, state.head_offsets)

    assert expected[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    prev = state.step(x, ids)
    assert (prev == -1).all()
    assert torch.equal(state.label_memory[5], expected[0])
    assert torch.equal(state.label_memory[7], expected[1])
    assert torch.equal(state.label_memory[9], expected[3])
    assert state.counters.sum() == 6 * 2  # every copy still counts as a row
    again = state.step(x, ids)
    assert torch.equal(again[0], again[2]) and torch.equal(again[0], again[4])
    assert torch.equal(first_occurrence_rows(ids), torch.tensor([0, 1, 0, 3, 0, 1]))


def test_state_dict_round_trip_gives_an_identical_next_step(rng):
    kwargs = dict(num_instances=50, num_clusters=[5, 7], dim=16, kernel="torch", stage2_slots=3)
    state = CokeState(**kwargs, seed=0)

    def batch():
        return F.normalize(torch.randn(20, 16, generator=rng), dim=1), torch.randint(0, 50, (20,), generator=rng)

    for _ in range(3):
        state.step(*batch())
    state.end_epoch()
    state.step(*batch())

    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    restored = CokeState(**kwargs, seed=99)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.checksum(), state.checksum())

    x, ids = batch()
    assert torch.equal(state.step(x, ids), restored.step(x, ids))
    for name, tensor in state.state_dict().items():
        assert torch.equal(tensor, restored.state_dict()[name]), name
    assert torch.equal(restored.checksum(), state.checksum())


def test_partition_is_proportional_and_covers_every_superclass():
    assert partition_clusters(10, [50, 30, 20]) == [5, 3, 2]
    assert partition_clusters(4, [1000, 1, 1]) == [2, 1, 1]
    shares = partition_clusters(37, [13, 400, 77, 5])
    assert sum(shares) == 37 and min(shares) >= 1
    with pytest.raises(ValueError):
        partition_clusters(2, [1, 1, 1])


def clustered_superclass_data(sizes, dim, generator: torch.Generator):
    """Each superclass: a tight, lopsided pair of modes (exactly 90% / 10%) around its own direction."""
    features, coarse = [], []
    for c, size in enumerate(sizes):
        base = F.normalize(torch.randn(2, dim, generator=generator), dim=1)
        mode = (torch.arange(size) < size // 10).long()  # the first tenth (the batches come in a drawn order)
        features.append(F.normalize(base[mode] + 0.05 * torch.randn(size, dim, generator=generator), dim=1))
        coarse.append(torch.full((size,), c))
    return torch.cat(features), torch.cat(coarse)


def test_coarse_labels_restrict_and_bound_inside_each_superclass(rng):
    sizes, dim, heads, ratio = [300, 200, 100], 16, [12, 7], 0.4
    features, coarse = clustered_superclass_data(sizes, dim, rng)
    coarse[::50] = -1  # a few instances with unknown superclass may go anywhere
    state = CokeState(sum(sizes), heads, dim, ratio=ratio, kernel="torch", superclass_sizes=sizes)
    for _ in range(5):
        order = torch.randperm(sum(sizes), generator=rng)
        for ids in order.split(50):
            state.step(features[ids], ids, coarse=coarse[ids])
        summary_under = state.fraction_under_bound()
        sizes_now = state.cluster_sizes()
        state.end_epoch()

    known = coarse >= 0
    for h, k in enumerate(heads):
        global_labels = state.label_memory[:, h] + state.offsets[h]
        block = state.block_starts[h]
        lo, hi = block[coarse.clamp_min(0)], block[coarse.clamp_min(0) + 1]
        assert ((global_labels >= lo) & (global_labels < hi))[known].all()
        shares = partition_clusters(k, sizes)
        members = torch.split(sizes_now[h], shares)
        for c, (share, size) in enumerate(zip(shares, sizes)):
            n_c = int((coarse == c).sum())
            # The online dual ascent meets the bound approximately (without duals, most clusters stay empty).
            assert members[c].min() >= 0.5 * ratio * n_c / share, (h, c, members[c])
    assert (summary_under <= 0.25).all()


def test_without_the_restriction_the_same_data_ignores_superclasses(rng):
    sizes, dim = [300, 200, 100], 16
    features, coarse = clustered_superclass_data(sizes, dim, rng)
    state = CokeState(sum(sizes), [12], dim, kernel="torch", superclass_sizes=sizes)
    state.step(features, torch.arange(sum(sizes)))  # coarse=None: the whole head is allowed
    block = state.block_starts[0]
    inside = (state.label_memory[:, 0] >= block[coarse]) & (state.label_memory[:, 0] < block[coarse + 1])
    assert not inside.all()


def basis_state(num_clusters, slots):
    """The legacy stage-2 rule (label counts); the faithful rule is tested in test_coke_faithful.py."""
    state = CokeState(4, [num_clusters], num_clusters, dual_lr=0.0, kernel="torch", stage2_slots=slots,
                      stage2=EarlierStage2(4, 1, slots, num_clusters, num_clusters))
    state.centers.copy_(torch.eye(num_clusters))
    return state


def test_stage2_soft_targets_favour_the_most_frequent_label():
    state = basis_state(4, slots=3)
    state.begin_stage2()
    sequence = [0, 0, 1, 0, 2]  # instance 0 falls in cluster 0 three times out of five
    for label in sequence:
        state.step(torch.eye(4)[[label]], torch.tensor([0]))
        state.end_epoch()
    labels, probs = state.soft_targets(torch.tensor([0, 1]), head=0)
    assert torch.allclose(probs.sum(dim=1), torch.tensor([1.0, 0.0]))  # instance 1 was never seen
    assert int(labels[0, probs[0].argmax()]) == 0
    weights = torch.tensor([3.0, 1.0, 1.0]) / len(sequence)
    assert torch.allclose(probs[0], torch.softmax(weights / 0.5, dim=0))
    dense = state.dense_soft_targets(torch.tensor([0]), head=0)
    assert torch.allclose(dense.sum(), torch.tensor(1.0)) and int(dense.argmax()) == 0
    assert torch.allclose(state.loss_centers(), F.normalize(torch.eye(4), dim=1))


def test_stage2_full_slots_replace_the_least_frequent():
    state = basis_state(4, slots=2)
    state.begin_stage2()
    for label in [0, 0, 1, 2]:
        state.step(torch.eye(4)[[label]], torch.tensor([0]))
    labels, probs = state.soft_targets(torch.tensor([0]), head=0)
    assert labels[0].tolist() == [0, 2]
    assert torch.allclose(probs[0], torch.softmax(torch.tensor([2.0, 1.0]) / 4 / 0.5, dim=0))


def test_dashboard_numbers(rng):
    """The epoch summary against the state it summarises: duals' per-head min/mean/max, sizes from the labels,
    the share of labels that changed from the previous epoch, and clusters under the bound."""
    state = CokeState(40, [4, 6], 8, kernel="torch")
    data = F.normalize(torch.randn(40, 8, generator=rng), dim=1)
    before = state.checksum()
    state.step(data, torch.arange(40))
    first = state.label_memory.clone()
    state.end_epoch()
    state.step(data.flip(1), torch.arange(40))  # other features: some labels change
    labels = state.label_memory.clone()
    summary = state.end_epoch()
    assert not torch.equal(before, state.checksum())
    for head, (lo, hi) in enumerate(zip(state.offsets[:-1], state.offsets[1:])):
        duals = state.duals[lo:hi]
        assert torch.allclose(summary["duals"][head], torch.stack([duals.min(), duals.mean(), duals.max()]))
        sizes = torch.bincount(labels[:, head], minlength=hi - lo)
        assert int(summary["min_size"][head]) == int(sizes.min()) and int(summary["max_size"][head]) == int(sizes.max())
        changed = (labels[:, head] != first[:, head]).float().mean()
        assert torch.isclose(summary["changed"][head], changed)
        bound = state.ratio * 40 / (hi - lo)
        assert torch.isclose(summary["under_bound"][head], (sizes.float() < bound).float().mean())
    assert (summary["changed"] > 0).any()