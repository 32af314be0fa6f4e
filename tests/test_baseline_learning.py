"""The contrastive and cluster-discrimination baselines (SimCLR, MoCo v2, MoCo v3, DeepCluster-v2, SwAV, SeCu) learn:
a brief fit on 2,500 real CIFAR-10 images gives frozen features (evaluate.py: linear probe on 5,000 training images,
kNN-20 against them, the full 10,000-image test set) that beat two references of the same backbone: random init, and the
same run at lr 0.

The lr-0 run is the control that catches a method whose updates do nothing: its weights stay at random init, but its
BatchNorm statistics adapt to the augmented images, and that alone gains points over random init (MoCo v2, seed 0:
+1.2 linear, +1.8 kNN). Its statistics settle within an epoch (momentum 0.1, 39 steps an epoch), so the control runs
2 epochs instead of the fit's 16.

Each method runs its shipped CIFAR-10 config under the tests' tiny model (training_utils.TINY), with the overrides
listed beside it. SeCu runs 128 epochs instead of 16: its network stays at lr 0 for one official epoch of 50,000
images (20.5 of these epochs) and then warms up, and it clears its control only from there (its horizon,
benchmarks/RESULTS.md §7)."""
import pytest
import torch

from test_evaluate import run_eval
from training_utils import LR0_CONTROL, SEED, run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

EPOCHS = 16
BUDGET = ("data.subset=250", f"trainer.max_epochs={EPOCHS}", f"trainer.check_val_every_n_epoch={EPOCHS}")
PROBE = ("protocol=linear,knn", "levels=fine", "data.subset=500", "data.eval_subset=0", "linear.epochs=30",
         "linear.lrs=[0.1]", "linear.weight_decays=[0.0]", "knn.ks=[20]", "feature_cache=false")
METHODS = {
    "simclr": ("configs/pretrain/simclr_cifar10.yaml", "optim.lr=1.0"),
    # a queue of 8 batches: the shipped 4,096 exceeds the 2,500 images
    "mocov2": ("configs/pretrain/mocov2_cifar10.yaml", "optim.lr=1.0", "method.queue_size=512"),
    # an EMA time constant of 25 steps instead of 100 for a fit of 624 steps, and crops of at least a fifth of the
    # image: with the shipped 0.99 and 0.08 the fit fell below its control at seed 4 (−1.0 linear / −1.1 kNN)
    "mocov3": ("configs/pretrain/mocov3_cifar10.yaml", "optim.lr=1.0", "method.base_momentum=0.96",
               "augment.min_scale=0.2"),
    # 25 images a cluster; crops of at least half the image, or two crops of one image rarely share a cluster and
    # the fit stays level with its control (seed 0: −0.3 linear / +0.3 kNN at the shipped 0.14)
    "deepclusterv2": ("configs/pretrain/deepclusterv2_cifar10.yaml", "optim.lr=1.0", "method.num_prototypes=[100,100,100]",
                      "augment.min_scale=0.5"),
    # the shipped 3,000 prototypes and 390 frozen steps are sized to 50,000 images at batch 256: here 150 prototypes
    # (17 images each, as there) and two epochs frozen (78 steps; 390 would be 10 of the 16 epochs). Crops of at least
    # half the image, as DeepCluster-v2's: with the shipped 0.14 the fit gained only +0.2 linear / +0.3 kNN over its
    # control at seed 4 (seeds 0-9: +0.2 to +2.8 / +0.3 to +2.8); with 0.5, +3.05 to +5.95 / +4.1 to +6.0
    "swav": ("configs/pretrain/swav_cifar10.yaml", "optim.lr=1.0", "method.num_prototypes=150",
             "method.freeze_prototypes_iters=78", "augment.min_scale=0.5"),
    # as shipped (batch 128, lr 0.2, the official frozen phase and warm-up in images) but for the tiny model, for 128
    # epochs: at 64 it gained +2.3 to +5.4 over its control at seeds 0-2 but -0.3 / -0.5 at seed 4
    "secu": ("configs/pretrain/secu_cifar10.yaml", "data.batch_size=128", "optim.warmup_epochs=10",
             "model.proj_hidden_dim=512", "trainer.max_epochs=128"),
}
# Points (linear, kNN) that each fit must gain over the lr-0 control and over random init, each 0.5 points or more
# under the worst of COKE_TEST_SEED 0-9 (benchmarks/test_margins.py, 2026-12-07; seeds 5-9 under AVX2 kernels, as on
# another machine of this kind). The worst seeds, over lr 0 and over random init (linear / kNN):
THRESHOLDS = {
    "simclr": {"lr0": (0.6, 1.5), "random": (2.5, 2.8)},  # +1.2 / +2.3, +3.2 / +3.6
    "mocov2": {"lr0": (0.4, 0.7), "random": (3.0, 2.8)},  # +1.0 / +1.35, +3.75 / +3.4
    "mocov3": {"lr0": (0.5, 1.5), "random": (3.0, 2.4)},  # +1.2 / +2.15, +3.6 / +3.0
    # DeepCluster-v2's linear gain over its control spans -0.01 (seed 5) to +3.2: its kNN gain carries the claim.
    "deepclusterv2": {"lr0": (-0.6, 0.7), "random": (1.9, 2.5)},  # -0.01 / +1.35, +2.5 / +3.2
    "swav": {"lr0": (2.4, 3.4), "random": (5.0, 5.3)},  # +3.05 / +4.1, +5.6 / +6.0
    # seeds 0-5 (2026-12-08; seed 5 under AVX2 kernels)
    "secu": {"lr0": (3.5, 4.0), "random": (5.5, 5.5)},  # +4.8 / +5.1, +6.75 / +7.0
}


def frozen_top1(spec, out, cifar10_tar, cache_dir, *extra: str) -> dict[str, float]:
    report = run_eval(spec, out, cifar10_tar, cache_dir, *PROBE, *extra)
    if spec != "random":
        assert report["checkpoint"]["epochs"] == report["checkpoint"]["planned_epochs"]
    return {r["protocol"]: r["value"] for r in report["results"] if r["level"] == "fine" and r["metric"] == "top1"}


@pytest.mark.parametrize("method", list(METHODS))
def test_brief_fit_beats_random_init_and_the_same_run_at_lr_0(method, tmp_path, cifar10_tar, cache_dir):
    assert torch.get_num_threads() == 1  # as audited
    config, *overrides = METHODS[method]
    scores = {}
    for name, extra in (("trained", ()), ("lr0", LR0_CONTROL)):
        run_dir = run(config, tmp_path / name, cifar10_tar, cache_dir, *BUDGET, *overrides, *extra)
        scores[name] = frozen_top1(run_dir / "checkpoints" / "last.ckpt", tmp_path / name, cifar10_tar, cache_dir)
    scores["random"] = frozen_top1("random", tmp_path / "random", cifar10_tar, cache_dir, "model.backbone=test_resnet",
                                   "model.cifar_stem=false", f"seed={SEED}")
    gain = {(ref, protocol): 100 * (scores["trained"][protocol] - scores[ref][protocol])
            for ref in ("random", "lr0") for protocol in ("offline-linear", "knn")}
    print("MEASURED " + " ".join(f"{method}_{p.removeprefix('offline-')}_over_{ref}={v:.2f}" for (ref, p), v in gain.items()))
    for ref, (linear, knn) in THRESHOLDS[method].items():
        assert gain[ref, "offline-linear"] > linear and gain[ref, "knn"] > knn, (ref, scores)
