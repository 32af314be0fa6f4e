"""Kornia views: shapes, dtypes, ranges, per-sample randomness and seeded determinism, on real images."""
import pytest
import torch

from configs.loader import load_config
from datamodules import EvalTransform, ViewAugmenter


@pytest.fixture(scope="module")
def images(cifar10):
    return torch.from_numpy(cifar10[1].images[::157][:64].copy())  # all classes


def augment_cfg(*overrides):
    return load_config(None, list(overrides)).augment


@pytest.mark.parametrize("kind", ["simclr", "byol"])
def test_pair_views_shapes_ranges_and_difference(images, kind):
    cfg = augment_cfg(f"augment.kind={kind}", "augment.gaussian_blur=true")
    views = ViewAugmenter(cfg)(images)
    assert len(views) == 2
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    for v in views:
        assert v.shape == (64, 3, 32, 32) and v.dtype == torch.float32
        pixels = v * std + mean
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert (views[0] - views[1]).abs().mean() > 0.05  # the two views differ
    # per-sample randomness: the same image repeated gets different crops within one batch
    same = ViewAugmenter(cfg)(images[:1].repeat(8, 1, 1, 1))[0]
    assert (same[0] - same[1:]).abs().flatten(1).mean(1).min() > 1e-3


def test_multicrop_sizes(images):
    cfg = augment_cfg("augment.kind=multicrop", "augment.num_small_crops=4", "augment.small_crop_size=16")
    views = ViewAugmenter(cfg)(images)
    assert [v.shape[-1] for v in views] == [32, 32, 16, 16, 16, 16]


def test_seeded_determinism(images):
    cfg = augment_cfg("augment.kind=byol", "augment.gaussian_blur=true")
    aug = ViewAugmenter(cfg)
    torch.manual_seed(7)
    a = aug(images)
    torch.manual_seed(7)
    b = aug(images)
    torch.manual_seed(8)
    c = aug(images)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_eval_transform_is_deterministic_normalised(images):
    cfg = augment_cfg()
    out = EvalTransform(cfg)(images)
    assert out.shape == (64, 3, 32, 32)
    assert torch.equal(out, EvalTransform(cfg)(images))
    # normalised with the CIFAR statistics: roughly zero mean, unit std on real images
    assert out.mean().abs() < 0.3 and 0.7 < out.std() < 1.3
    big = EvalTransform(augment_cfg("augment.eval_resize=40", "augment.crop_size=36"))(images)
    assert big.shape == (64, 3, 36, 36)


def test_view_size_shrinks_the_training_views_only(images):
    cfg = augment_cfg("augment.view_size=24", "augment.num_small_crops=2", "augment.small_crop_size=16")
    views = ViewAugmenter(cfg)(images)
    assert [v.shape[-1] for v in views] == [24, 24, 16, 16]
    assert EvalTransform(cfg)(images).shape == (64, 3, 32, 32)  # evaluation (and the clean view) keep crop_size
    assert [v.shape[-1] for v in ViewAugmenter(augment_cfg())(images)] == [32, 32]  # 0: crop_size
