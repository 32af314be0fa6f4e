"""The minimum-size constraint holds on real features: CoKe's online assignment over real CIFAR-10 epochs."""
import pytest
import torch
import torch.nn.functional as F

from datamodules.datasets import per_class_rows
from lightning_modules.backbone import build_backbone
from ops.coke_state import CokeState

RATIO, BATCH, PER_CLASS = 0.4, 250, 400


@pytest.fixture(scope="module")
def real_features(cifar10):
    """Unit 128-d embeddings of 4,000 real CIFAR-10 train images from a fixed (seeded, untrained) backbone,
    through a random projection that ends in per-dimension standardisation, as CoKe's projection ends in BN.

    Without that BN the untrained features sit in a narrow cone (mean cosine to their mean 0.95); the duals
    then decide every assignment and one cluster takes each whole batch in turn.
    """
    train = cifar10[0]
    rows = per_class_rows(train.fine, PER_CLASS, seed=0)
    torch.manual_seed(0)
    backbone, dim = build_backbone("test_resnet", cifar_stem=False)
    projection = torch.randn(dim, 128, generator=torch.Generator().manual_seed(1))
    images = torch.from_numpy(train.images[rows]).float() / 255
    with torch.no_grad():
        feats = torch.cat([backbone.eval()(chunk) for chunk in images.split(500)])
    z = feats @ projection
    return F.normalize((z - z.mean(0)) / z.std(0), dim=1), torch.from_numpy(train.coarse[rows])


def run_epochs(state: CokeState, x: torch.Tensor, epochs: int, coarse=None) -> dict:
    summary = {}
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for ids in order.split(BATCH):
            state.step(x[ids], ids, None if coarse is None else coarse[ids])
        sizes = state.cluster_sizes()
        summary = {"sizes": sizes, **state.end_epoch()}
    return summary


@pytest.mark.parametrize("num_clusters", [[40], [20, 50]])
def test_no_cluster_ends_more_than_10_percent_under_the_bound(real_features, num_clusters):
    x, _ = real_features
    state = CokeState(len(x), num_clusters, x.shape[1], ratio=RATIO, dual_lr=20.0, kernel="torch")
    summary = run_epochs(state, x, epochs=3)
    for head, k in enumerate(num_clusters):
        bound = RATIO * len(x) / k
        sizes = summary["sizes"][head].float()
        assert sizes.sum() == len(x)
        assert sizes.min() >= 0.9 * bound, (k, sizes.min().item(), bound)
        assert (sizes > 0).float().mean() > 0.9  # no collapse: (nearly) every cluster in use
    assert (state.label_memory >= 0).all()


def test_without_the_duals_the_same_features_collapse(real_features):
    """The check above can fail: plain online k-means (dual_lr = 0) on these features leaves clusters under the bound."""
    x, _ = real_features
    state = CokeState(len(x), [40], x.shape[1], ratio=RATIO, dual_lr=0.0, kernel="torch")
    sizes = run_epochs(state, x, epochs=3)["sizes"][0].float()
    assert sizes.min() < 0.9 * RATIO * len(x) / 40


def test_coarse_restricted_bound_holds_inside_each_superclass(real_features):
    x, coarse = real_features
    superclass_sizes = torch.bincount(coarse).tolist()
    state = CokeState(len(x), [40], x.shape[1], ratio=RATIO, dual_lr=20.0, kernel="torch", superclass_sizes=superclass_sizes)
    sizes = run_epochs(state, x, epochs=3, coarse=coarse)["sizes"][0].float()
    ranges = state.row_ranges(torch.arange(len(superclass_sizes)))
    labels = state.label_memory[:, 0]
    for c, (lo, hi) in enumerate(ranges.view(len(superclass_sizes), -1, 2)[:, 0].tolist()):
        members = labels[coarse == c]
        assert ((members >= lo) & (members < hi)).all()  # never outside its own superclass
        bound = RATIO * superclass_sizes[c] / (hi - lo)
        assert sizes[lo:hi].min() >= 0.9 * bound, (c, sizes[lo:hi].min().item(), bound)
