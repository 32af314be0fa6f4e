"""CoKe's assignment mode in training (method.assign_precision): ieee (exact fp32) or the Triton GEMM in tf32.

tf32 may replace ieee only if, on real features, it agrees on >= 99.9% of the labels from the same state, keeps the
clusters at their bound as ieee does, and its 50-step trajectory holds the duals and centres within the stated
tolerances. The CUDA tests run in benchmarks/gpu_suite.sh; the CPU test checks the option reaches the kernel.
"""
import pytest
import torch
import torch.nn.functional as F

from ops.assign import assign
from ops.coke_state import CokeState

AGREEMENT = 0.999  # labels from the same state
DUAL_TOLERANCE = 0.5  # largest |dual difference| after 50 steps (one differing label moves a dual by dual_lr / B)
CENTRE_COSINE = 0.98  # smallest cosine between the two runs' centres after 50 steps
UNDER_BOUND_SLACK = 0.01  # tf32's fraction of clusters under the bound may exceed ieee's by this much


def test_the_precision_reaches_the_assignment(monkeypatch):
    import ops.coke_state as coke_state

    seen = []
    real = coke_state.assign

    def recording(*args, **kwargs):
        seen.append(kwargs.get("precision"))
        return real(*args, **{**kwargs, "precision": "ieee"})

    monkeypatch.setattr(coke_state, "assign", recording)
    state = CokeState(64, [4, 6], 8, precision="tf32")
    x = F.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    state.step(x, torch.arange(16))
    assert seen == ["tf32"]


@pytest.fixture(scope="module")
def real_features(cifar10):
    """4096 real CIFAR-10 test images through a random-init ResNet-18 (CIFAR stem) and a random projection."""
    from lightning_modules.backbone import build_backbone

    torch.manual_seed(0)
    backbone, width = build_backbone("resnet18", True)
    backbone = backbone.cuda().eval()
    projection = torch.randn(width, 128, device="cuda") / width**0.5
    images = torch.from_numpy(cifar10[1].images[:4096]).cuda().float() / 255
    with torch.no_grad():
        return F.normalize(torch.cat([backbone(chunk) for chunk in images.split(512)]) @ projection, dim=1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tf32_assignment_is_exact_enough_on_real_features(real_features):
    x = real_features
    states = {p: CokeState(len(x), [300, 400, 500], x.shape[1], kernel="triton", precision=p, seed=0).cuda()
              for p in ("ieee", "tf32")}
    generator = torch.Generator(device="cuda").manual_seed(0)
    agree = total = 0
    under = {p: [] for p in states}
    for step in range(50):
        ids = torch.randperm(len(x), device="cuda", generator=generator)[:512]
        ieee, _ = assign(x[ids], states["ieee"].centers, states["ieee"].duals, states["ieee"].head_offsets,
                         kernel="triton", precision="ieee")
        tf32, _ = assign(x[ids], states["ieee"].centers, states["ieee"].duals, states["ieee"].head_offsets,
                         kernel="triton", precision="tf32")
        agree += int((ieee == tf32).sum())
        total += ieee.numel()
        for state in states.values():
            state.step(x[ids], ids)
        if step % 10 == 9:
            for p, state in states.items():
                under[p].append(state.fraction_under_bound())
                state.end_epoch()
    assert agree / total >= AGREEMENT, f"tf32 agreed on {agree / total:.5f} of the labels from the same state"
    for ieee_under, tf32_under in zip(under["ieee"], under["tf32"]):
        assert (tf32_under <= ieee_under + UNDER_BOUND_SLACK).all(), (ieee_under, tf32_under)
    a, b = states["ieee"], states["tf32"]
    assert (a.duals - b.duals).abs().max() <= DUAL_TOLERANCE
    assert F.cosine_similarity(a.centers, b.centers, dim=1).min() >= CENTRE_COSINE
