"""Each loss against a plain per-row reference written with explicit loops in float64."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ops.contrastive import info_nce, moco_v3_loss, nt_xent
from ops.supervised import cosine_classifier_logits, supcon_loss
from ops.swav import swav_loss


def _unit_rows(x: torch.Tensor) -> list[list[float]]:
    return F.normalize(x.double(), dim=-1).tolist()


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _neg_log_softmax_at(scores: list[float], target: int) -> float:
    return -scores[target] + math.log(sum(math.exp(s) for s in scores))


def reference_nt_xent(z1, z2, temperature):
    z = _unit_rows(torch.cat([z1, z2]))
    n = len(z) // 2
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = [j for j in range(2 * n) if j != i]
        scores = [_dot(z[i], z[j]) / temperature for j in others]
        total += _neg_log_softmax_at(scores, others.index(positive))
    return total / (2 * n)


def reference_info_nce(q, k, temperature, queue):
    qs, ks = _unit_rows(q), _unit_rows(k)
    total = 0.0
    for i in range(len(qs)):
        if queue is None:
            scores = [_dot(qs[i], key) / temperature for key in ks]
            total += _neg_log_softmax_at(scores, i)
        else:
            scores = [_dot(qs[i], ks[i]) / temperature] + [_dot(qs[i], row) / temperature for row in queue.double().tolist()]
            total += _neg_log_softmax_at(scores, 0)
    return total / len(qs)


def reference_supcon(z, labels, temperature):
    batch, views, _ = z.shape
    flat = _unit_rows(z.reshape(batch * views, -1))
    owner = [b for b in range(batch) for _ in range(views)]
    label = [int(labels[b]) for b in owner]
    losses = []
    for i in range(batch * views):
        others = [j for j in range(batch * views) if j != i]
        positives = [j for j in others if owner[j] == owner[i] or (label[i] >= 0 and label[j] == label[i])]
        if not positives:
            continue
        log_denominator = math.log(sum(math.exp(_dot(flat[i], flat[a]) / temperature) for a in others))
        mean_log_prob = sum(_dot(flat[i], flat[p]) / temperature - log_denominator for p in positives) / len(positives)
        losses.append(-mean_log_prob)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_nt_xent_matches_reference(seed, temperature):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert nt_xent(z1, z2, temperature).item() == pytest.approx(reference_nt_xent(z1, z2, temperature), rel=1e-5)


def reference_nt_xent_rows(z1, z2, temperature):
    """Per-anchor NT-Xent in float64: view-1 anchors 0..n-1, then view-2 anchors 0..n-1."""
    z = _unit_rows(torch.cat([z1, z2]))
    n = len(z) // 2
    rows = []
    for i in range(2 * n):
        others = [j for j in range(2 * n) if j != i]
        scores = [_dot(z[i], z[j]) / temperature for j in others]
        rows.append(_neg_log_softmax_at(scores, others.index((i + n) % (2 * n))))
    return rows


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_gather_false_keeps_negatives_local_under_a_stand_in_two_rank_gather(monkeypatch, temperature):
    """Rank 1 of 2 with a stand-in all_gather that prepends rank 0's rows: the default takes rank 0's projections as
    negatives (the global reference's loss on this rank's anchors); gather=False never calls the gather and equals the
    loss of the local batch alone."""
    import ops.contrastive as contrastive

    g = torch.Generator().manual_seed(11)
    mine1, mine2, other1, other2 = (torch.randn(5, 6, generator=g) for _ in range(4))
    calls = []

    def stand_in_gather(x):
        calls.append(x.shape)
        other = F.normalize(other1 if len(calls) % 2 else other2, dim=1)  # z1 is gathered first, then z2
        return torch.cat([other, x])

    monkeypatch.setattr(contrastive, "gather_with_grad", stand_in_gather)
    monkeypatch.setattr(contrastive, "rank", lambda: 1)
    gathered = nt_xent(mine1, mine2, temperature).item()
    assert len(calls) == 2
    rows = reference_nt_xent_rows(torch.cat([other1, mine1]), torch.cat([other2, mine2]), temperature)
    local_anchors = rows[5:10] + rows[15:20]  # this rank's rows in both views
    assert gathered == pytest.approx(sum(local_anchors) / 10, rel=1e-5)

    calls.clear()
    local = nt_xent(mine1, mine2, temperature, gather=False).item()
    assert calls == []  # gather=False does not gather
    assert local == pytest.approx(reference_nt_xent(mine1, mine2, temperature), rel=1e-5)
    assert abs(local - gathered) > 0.05  # the two paths differ here, so each assertion above tells them apart


def test_nt_xent_symmetric_in_the_two_views():
    z1, z2 = torch.randn(9, 6), torch.randn(9, 6)
    torch.testing.assert_close(nt_xent(z1, z2), nt_xent(z2, z1))


def test_nt_xent_permutation_equivariant():
    z1 = torch.randn(10, 4, requires_grad=True)
    z2 = torch.randn(10, 4, requires_grad=True)
    order = torch.randperm(10)
    p1 = z1.detach()[order].requires_grad_()
    p2 = z2.detach()[order].requires_grad_()
    loss, permuted_loss = nt_xent(z1, z2), nt_xent(p1, p2)
    torch.testing.assert_close(loss, permuted_loss)
    loss.backward()
    permuted_loss.backward()
    torch.testing.assert_close(p1.grad, z1.grad[order])
    torch.testing.assert_close(p2.grad, z2.grad[order])


def test_nt_xent_ignores_the_norm_of_projections():
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    scale = torch.rand(6, 1) * 10 + 0.1
    torch.testing.assert_close(nt_xent(z1 * scale, z2), nt_xent(z1, z2))


def test_nt_xent_gradient_is_the_analytic_one():
    z1 = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z1, z2))


@pytest.mark.parametrize("with_queue", [True, False])
def test_info_nce_matches_reference_and_keys_get_no_gradient(with_queue):
    q = torch.randn(6, 5, requires_grad=True)
    k = torch.randn(6, 5, requires_grad=True)
    queue = F.normalize(torch.randn(11, 5), dim=1) if with_queue else None
    loss = info_nce(q, k, 0.2, queue)
    assert loss.item() == pytest.approx(reference_info_nce(q.detach(), k.detach(), 0.2, queue), rel=1e-5)
    loss.backward()
    assert k.grad is None
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_moco_v3_loss_is_2t_times_cross_entropy_against_own_key():
    q = torch.randn(8, 6, requires_grad=True)
    k = torch.randn(8, 6, requires_grad=True)
    temperature = 0.2
    loss = moco_v3_loss(q, k, temperature)
    expected = 2 * temperature * reference_info_nce(q.detach(), k.detach(), temperature, None)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert k.grad is None


def test_swav_loss_matches_reference_loop():
    g = torch.Generator().manual_seed(0)
    batch, clusters, temperature = 5, 7, 0.1
    logits = [torch.randn(batch, clusters, generator=g) for _ in range(4)]  # 2 large + 2 small crops
    codes = [torch.softmax(torch.randn(batch, clusters, generator=g), dim=1) for _ in range(2)]
    terms = []
    for i in range(2):
        for v in range(4):
            if v == i:
                continue
            per_row = []
            for b in range(batch):
                scores = [s / temperature for s in logits[v][b].double().tolist()]
                log_z = math.log(sum(math.exp(s) for s in scores))
                per_row.append(-sum(codes[i][b, c].item() * (scores[c] - log_z) for c in range(clusters)))
            terms.append(sum(per_row) / batch)
    assert swav_loss(logits, codes, temperature).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_swav_loss_does_not_backpropagate_into_codes():
    logits = [torch.randn(4, 6, requires_grad=True) for _ in range(3)]
    codes = [torch.softmax(torch.randn(4, 6), 1).requires_grad_() for _ in range(2)]
    swav_loss(logits, codes).backward()
    assert all(c.grad is None for c in codes)
    assert all(torch.isfinite(x.grad).all() for x in logits)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("views", [1, 2, 3])
def test_supcon_matches_reference(seed, views):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(6, views, 4, generator=g)
    labels = torch.tensor([0, 1, 0, 2, -1, 1])  # instance 3's label is unique, instance 4's unknown
    expected = reference_supcon(z, labels, 0.1)
    assert supcon_loss(z, labels, 0.1).item() == pytest.approx(expected, rel=1e-5)


def test_supcon_with_unique_labels_and_two_views_is_nt_xent():
    # Each anchor's only positive is its other view and its denominator runs over the same
    # 2B-1 other views as NT-Xent's, so every per-anchor term, and hence the mean, coincides.
    z = torch.randn(8, 2, 5)
    expected = nt_xent(z[:, 0], z[:, 1], 0.2)
    torch.testing.assert_close(supcon_loss(z, torch.arange(8), 0.2), expected)
    torch.testing.assert_close(supcon_loss(z, torch.full((8,), -1), 0.2), expected)


def test_supcon_gradient_is_the_analytic_one():
    z = torch.randn(4, 2, 3, dtype=torch.double, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1])
    assert torch.autograd.gradcheck(lambda x: supcon_loss(x, labels, 0.5), (z,))


def test_supcon_without_any_positive_is_zero_with_a_graph():
    z = torch.randn(5, 1, 4, requires_grad=True)
    loss = supcon_loss(z, torch.arange(5))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_cosine_classifier_logits_are_cosines_over_temperature():
    z, weight = torch.randn(5, 4), torch.randn(3, 4)
    logits = cosine_classifier_logits(z * 7, weight * 0.3, 0.05)
    for b in range(5):
        for c in range(3):
            expected = F.cosine_similarity(z[b], weight[c], dim=0) / 0.05
            assert logits[b, c].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("magnitude", [1e-3, 1.0, 1e4])
def test_gradients_stay_finite_for_tiny_and_huge_inputs(magnitude):
    z1 = (torch.randn(6, 4) * magnitude).requires_grad_()
    z2 = (torch.randn(6, 4) * magnitude).requires_grad_()
    z3 = (torch.randn(6, 2, 4) * magnitude).requires_grad_()
    losses = [
        nt_xent(z1, z2, 0.01),
        info_nce(z1, z2, 0.01, F.normalize(torch.randn(9, 4), dim=1)),
        moco_v3_loss(z1, z2, 0.01),
        supcon_loss(z3, torch.tensor([0, 0, 1, 1, 2, -1]), 0.01),
    ]
    for loss in losses:
        assert torch.isfinite(loss)
    torch.stack(losses).sum().backward()
    for x in (z1, z2, z3):
        assert torch.isfinite(x.grad).all()
