"""CoKe's options for short budgets (departures from the paper, each off by default): the centres' member count
carried across epochs (method.center_carry) and clustering on the un-augmented image (method.clean_view.assign_on=clean)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ops.coke_state import CokeState


def points(n: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_without_carry_the_first_member_of_an_epoch_replaces_its_centre():
    state = CokeState(8, [2], 4, ratio=1.0, dual_lr=0.0, seed=0)
    state.step(points(8, 4, 1), torch.arange(8))
    state.end_epoch()
    assert (state.counters == 0).all()
    x = points(1, 4, 2)
    state.step(x, torch.tensor([0]))
    hit = state.label_memory[0, 0].item()
    assert torch.allclose(state.centers[hit], x[0], atol=1e-6)


def test_carry_keeps_a_fraction_of_the_members_and_blends_the_next_epochs_first_member():
    state = CokeState(8, [2], 4, ratio=1.0, dual_lr=0.0, seed=0, center_carry=0.5)
    state.step(points(8, 4, 1), torch.arange(8))
    sizes = state.counters.clone()
    before = state.centers.clone()
    state.end_epoch()
    assert torch.equal(state.counters, torch.floor(sizes * 0.5).long())
    assert [s.sum().item() for s in state.cluster_sizes()] == [0]  # the dashboard counts this epoch's members only

    x = points(1, 4, 2)
    state.step(x, torch.tensor([0]))
    hit = state.label_memory[0, 0].item()
    m = float(torch.floor(sizes[hit] * 0.5))
    expected = F.normalize((m * before[hit] + x[0]) / (m + 1), dim=0)
    assert torch.allclose(state.centers[hit], expected, atol=1e-6)
    assert [s.sum().item() for s in state.cluster_sizes()] == [1]


def test_carry_is_an_exponential_memory_of_the_counts():
    state = CokeState(4, [1], 3, ratio=1.0, dual_lr=0.0, seed=0, center_carry=0.75)
    for _ in range(6):
        state.step(points(4, 3, 3), torch.arange(4))
        state.end_epoch()
    # carried_{e+1} = floor(0.75 (carried_e + 4)): 3, 5, 6, 7, 8, 9 (the floor slows it below the 12 fixed point)
    assert state.counters.item() == 9


def test_carry_out_of_range_is_refused():
    with pytest.raises(ValueError, match="center_carry"):
        CokeState(4, [2], 3, center_carry=1.0)


def test_assign_on_clean_clusters_the_unaugmented_image(cifar10_tar, cache_dir):
    from test_coke_module import ONE_VIEW, build

    model, datamodule = build(ONE_VIEW, cifar10_tar, cache_dir, "augment.clean_view=true", "method.clean_view.assign_on=clean")
    batch = next(iter(datamodule.train_dataloader()))
    batch["views"] = datamodule.augment(batch["image"])
    batch["clean_view"] = datamodule.eval_transform(batch["image"])
    model.train()
    with torch.no_grad():
        expected = F.normalize(model.projection(model(batch["clean_view"])), dim=1)
        model.training_loss(batch, model.encode_views(batch["views"]))
    # The first step of an epoch: every cluster's first member replaced its centre, so each hit centre is the mean
    # of the clean projections that the step gave it.
    labels = model.clustering.label_memory[batch["index"], 0]
    for k in labels.unique():
        members = expected[labels == k]
        assert torch.allclose(model.clustering.centers[k], F.normalize(members.mean(0), dim=0), atol=1e-4)


def test_assign_on_clean_without_the_clean_view_is_a_clear_error(cifar10_tar, cache_dir):
    from test_coke_module import ONE_VIEW, build

    with pytest.raises(ValueError, match="augment.clean_view=true"):
        build(ONE_VIEW, cifar10_tar, cache_dir, "method.clean_view.assign_on=clean")


def test_assign_on_clean_with_two_views_is_a_clear_error(cifar10_tar, cache_dir):
    from test_coke_module import ONE_VIEW, build

    with pytest.raises(ValueError, match="one-view option"):
        build(ONE_VIEW, cifar10_tar, cache_dir, "augment.clean_view=true", "method.clean_view.assign_on=clean",
              "augment.num_large_crops=2")


def test_assign_momentum_clusters_the_clean_image_with_the_ema_encoder(cifar10_tar, cache_dir):
    from test_coke_module import ONE_VIEW, build

    model, datamodule = build(ONE_VIEW, cifar10_tar, cache_dir, "augment.clean_view=true", "method.clean_view.assign_on=clean",
                              "method.clean_view.momentum=0.9")
    ema = model.assign_encoder.net
    with torch.no_grad():  # an online network that has moved away from its EMA copy
        for p in [*model.backbone.parameters(), *model.projection.parameters()]:
            p.add_(0.01 * torch.randn_like(p))
    online = [p.detach().clone() for m in (model.backbone, model.projection) for p in m.parameters()]
    before = [p.detach().clone() for p in ema.parameters()]
    batch = next(iter(datamodule.train_dataloader()))
    batch["views"] = datamodule.augment(batch["image"])
    batch["clean_view"] = datamodule.eval_transform(batch["image"])
    model.train()
    with torch.no_grad():
        model.training_loss(batch, model.encode_views(batch["views"]))
    after = list(ema.parameters())
    for b, o, a in zip(before, online, after):  # one EMA step: 0.9 of the copy, 0.1 of the online network
        torch.testing.assert_close(a, 0.9 * b + 0.1 * o)
    assert not any(p.requires_grad for p in after)
    with torch.no_grad():
        from_ema = F.normalize(ema(batch["clean_view"]), dim=1)
        from_online = F.normalize(model.projection(model(batch["clean_view"])), dim=1)
    labels = model.clustering.label_memory[batch["index"], 0]
    for k in labels.unique():  # the first step of an epoch: each hit centre is its members' mean EMA projection
        centre = model.clustering.centers[k]
        assert torch.allclose(centre, F.normalize(from_ema[labels == k].mean(0), dim=0), atol=1e-4)
    assert not torch.allclose(from_ema, from_online, atol=1e-3)  # so the test can tell the two encoders apart


@pytest.mark.parametrize("overrides, message", [
    (["method.clean_view.momentum=0.9"], "method.clean_view.assign_on=clean"),
    (["augment.clean_view=true", "method.clean_view.assign_on=clean", "method.clean_view.momentum=1.0"], r"\[0, 1\)"),
])
def test_assign_momentum_needs_the_clean_assignment_and_a_momentum_below_one(overrides, message, cifar10_tar,
                                                                              cache_dir):
    from test_coke_module import ONE_VIEW, build

    with pytest.raises(ValueError, match=message):
        build(ONE_VIEW, cifar10_tar, cache_dir, *overrides)


def test_proj_last_bn_false_ends_the_projection_with_a_linear_layer(cifar10_tar, cache_dir):
    from test_coke_module import ONE_VIEW, build

    with_bn, _ = build(ONE_VIEW, cifar10_tar, cache_dir)
    without, _ = build(ONE_VIEW, cifar10_tar, cache_dir, "method.proj_last_bn=false")
    assert isinstance(with_bn.projection[-1], torch.nn.BatchNorm1d)
    assert isinstance(without.projection[-1], torch.nn.Linear) and without.projection[-1].bias is not None


def swav_codes(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp written plainly (exp, then alternate column and row sums); 0 iterations: a softmax."""
    q = torch.exp(scores / epsilon)
    for _ in range(iterations):
        q = q / q.sum(0, keepdim=True)  # every cluster the same mass over the batch
        q = q / q.sum(1, keepdim=True)  # every image's row sums to one
    return q / q.sum(1, keepdim=True)


@pytest.mark.parametrize("iterations", [0, 3])
def test_clean_target_weight_mixes_the_clean_images_soft_assignment_into_the_loss(iterations, cifar10_tar, cache_dir):
    from test_coke_module import ONE_VIEW, build

    w, teacher_t = 0.4, 0.05
    model, datamodule = build(ONE_VIEW, cifar10_tar, cache_dir, "augment.clean_view=true", "method.clean_view.assign_on=clean",
                              f"method.soft_target.weight={w}", f"method.soft_target.temperature={teacher_t}",
                              f"method.soft_target.sinkhorn_iterations={iterations}")
    state = model.clustering
    generator = torch.Generator().manual_seed(3)
    centres = F.normalize(torch.randn(state.centers.shape, generator=generator), dim=1)
    labels = torch.stack([torch.randint(0, k, (state.label_memory.shape[0],), generator=generator)
                          for k in state.num_clusters], 1)
    state.load_clusters(centres, labels)
    batch = next(iter(datamodule.train_dataloader()))
    batch["views"] = datamodule.augment(batch["image"])
    batch["clean_view"] = datamodule.eval_transform(batch["image"])
    model.train()
    with torch.no_grad():
        loss = model.training_loss(batch, model.encode_views(batch["views"]))
        # The same loss by hand: the predictor's logits against the previous-epoch label and the clean image's
        # softmax over the (fixed within the epoch) centres at the teacher temperature.
        student = F.normalize(model.prediction(model.projection(model(batch["views"][0]))), dim=1)
        clean = F.normalize(model.projection(model(batch["clean_view"])), dim=1)
        expected, start = [], 0
        for head, k in enumerate(state.num_clusters):
            c = centres[start:start + k]
            start += k
            logits = student @ c.T / model.temperature
            target = swav_codes(clean @ c.T, teacher_t, iterations)
            if iterations:  # a different target from the softmax, with the clusters' masses closer to B/K
                plain = F.softmax(clean @ c.T / teacher_t, 1)
                off_share = lambda q: (q.sum(0) - len(q) / k).abs().max()  # noqa: E731
                assert (target - plain).abs().max() > 1e-2 and off_share(target) < off_share(plain)
            soft_ce = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
            expected.append((1 - w) * F.cross_entropy(logits, labels[batch["index"], head]) + w * soft_ce)
    torch.testing.assert_close(loss, torch.stack(expected).mean(), atol=1e-5, rtol=1e-5)


def test_clean_target_weight_needs_the_clean_assignment(cifar10_tar, cache_dir):
    from test_coke_module import ONE_VIEW, build

    with pytest.raises(ValueError, match="method.clean_view.assign_on=clean"):
        build(ONE_VIEW, cifar10_tar, cache_dir, "method.soft_target.weight=0.5")


def test_clean_contrast_weight_adds_an_infonce_of_the_view_against_the_clean_images(cifar10_tar, cache_dir):
    from test_coke_module import ONE_VIEW, build

    w, t = 0.7, 0.2
    common = ("augment.clean_view=true", "method.clean_view.assign_on=clean")
    model, datamodule = build(ONE_VIEW, cifar10_tar, cache_dir, *common, f"method.instance_term.weight={w}",
                              f"method.instance_term.temperature={t}")
    plain, _ = build(ONE_VIEW, cifar10_tar, cache_dir, *common)
    plain.load_state_dict(model.state_dict())
    batch = next(iter(datamodule.train_dataloader()))
    batch["views"] = datamodule.augment(batch["image"])
    batch["clean_view"] = datamodule.eval_transform(batch["image"])
    model.train(), plain.train()
    with torch.no_grad():
        # Two copies of the same state: the difference of the losses is the contrastive term alone.
        loss = model.training_loss(batch, model.encode_views(batch["views"]))
        without = plain.training_loss(batch, plain.encode_views(batch["views"]))
        student = F.normalize(model.prediction(model.projection(model(batch["views"][0]))), dim=1)
        clean = F.normalize(model.projection(model(batch["clean_view"])), dim=1)
        # Image i's positive is its own clean image; the batch's other clean images are its negatives.
        infonce = F.cross_entropy(student @ clean.T / t, torch.arange(len(student))) * 2 * t
    assert infonce > 0.5  # a real term: far from matched at initialisation
    torch.testing.assert_close(loss - without, w * infonce, atol=1e-5, rtol=1e-5)
    # method.cluster_loss_weight scales the cluster targets only: at 0 the instance-level term is all that is left.
    only, _ = build(ONE_VIEW, cifar10_tar, cache_dir, *common, f"method.instance_term.weight={w}",
                    f"method.instance_term.temperature={t}", "method.instance_term.cluster_weight=0")
    only.load_state_dict(model.state_dict())
    only.train()
    with torch.no_grad():
        torch.testing.assert_close(only.training_loss(batch, only.encode_views(batch["views"])), w * infonce,
                                   atol=1e-5, rtol=1e-5)


def test_clean_contrast_weight_needs_the_clean_assignment(cifar10_tar, cache_dir):
    from test_coke_module import ONE_VIEW, build

    with pytest.raises(ValueError, match="method.clean_view.assign_on=clean"):
        build(ONE_VIEW, cifar10_tar, cache_dir, "method.instance_term.weight=1.0")
