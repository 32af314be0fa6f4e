"""One-view CoKe learns on real CIFAR-10: its loss falls further than its lr-0 control's under the size bound, with
its dashboard logged; with quick.yaml's setting its frozen features beat random init and the lr-0 control.

The paper's rules have no learning test here: at this file's budget (25 epochs on 2,500 images at lr 1.6) their frozen
kNN-20 is level with the lr-0 control, -2.7 to +1.7 points over COKE_TEST_SEED 0-9 (benchmarks/RESULTS.md §7); they
clear it at a longer horizon (§1) and are held to the official code's numbers step by step (test_coke_faithful.py)."""
import json
from pathlib import Path

import pytest
import torch

import evaluate
from configs.loader import load_config, to_plain
from lightning_modules.registry import method_schemas
from test_coke_module import ONE_VIEW, clustering_state, last_checkpoint
from training_utils import LR0_CONTROL, SEED, load_benchmark, metrics, run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_one_view_fit_learns_keeps_the_bound_and_logs_the_dashboard(tmp_path, cifar10_tar, cache_dir):
    fit = ("data.subset=80", "method.num_clusters=[16,32]", "trainer.max_epochs=4", "trainer.check_val_every_n_epoch=4",
           "logger.log_every_n_steps=1", "optim.probe_lr=0.5")
    run_dir = run(ONE_VIEW, tmp_path, cifar10_tar, cache_dir, *fit)
    # The lr-0 control: the same 4 epochs at lr 0 for all but the online probe. Its clusters are those of random-init
    # features with BatchNorm statistics adapted to the images, which alone carry some class information.
    control = metrics(run(ONE_VIEW, tmp_path / "lr0", cifar10_tar, cache_dir, *fit, "optim.lr=0.0"))
    m = metrics(run_dir)
    steps = 800 // 64
    losses = m["train/loss"]
    assert len(losses) == 4 * steps
    assert losses[:steps] == [0.0] * steps  # epoch 0: no previous labels yet, nothing to predict
    first, last = sum(losses[steps:2 * steps]) / steps, sum(losses[-steps:]) / steps
    control_losses = control["train/loss"]
    control_drop = sum(control_losses[steps:2 * steps]) / steps - sum(control_losses[-steps:]) / steps
    print(f"MEASURED coke_tiny_loss_drop={first - last:.4f} coke_tiny_fine={m['online/fine_acc1'][-1]:.4f} "
          f"coke_tiny_lr0_loss_drop={control_drop:.4f} "
          f"coke_tiny_nmi_fine={m['coke/nmi_fine'][-1]:.4f} coke_tiny_lr0_nmi_fine={control['coke/nmi_fine'][-1]:.4f} "
          f"coke_tiny_nmi_over_lr0={m['coke/nmi_fine'][-1] - control['coke/nmi_fine'][-1]:.4f} "
          f"coke_tiny_lr0_fine={control['online/fine_acc1'][-1]:.4f} "
          f"coke_tiny_fine_over_lr0={m['online/fine_acc1'][-1] - control['online/fine_acc1'][-1]:.4f} "
          f"coke_tiny_loss_drop_over_lr0={first - last - control_drop:.4f}")
    # Learning: the loss falls from the first epoch with targets to the last by more than the control's does. The
    # fit's drop minus the control's, COKE_TEST_SEED 0-9 (benchmarks/test_margins.py, 2026-12-07; 5-9 under AVX2
    # kernels): 0.551, 0.263, 0.331, 0.442, 0.353, 0.311, 0.260, 0.538, 0.309, 0.485 (the control's own: -0.19 to +0.02;
    # its centres and labels still move).
    assert (first - last) - control_drop > 0.15, (first, last, control_drop)
    # A guard against a collapse, not a learning claim: the online fine probe beats chance (0.1). Three gradient
    # epochs on 800 images leave it level with or below the lr-0 control's (0.162 to 0.220 against 0.218 to 0.266;
    # -7.6 to +0.2 points at seeds 0-9): the learning claims on features are test_quick_setting_beats_a_random_init_backbone_on_
    # frozen_knn's, against random init and the lr-0 control.
    assert m["online/fine_acc1"][-1] > 0.13

    seen = steps * 64
    for head, k in enumerate([16, 32]):
        bound = 0.4 * seen / k  # r·N/K over the instances an epoch sees
        min_sizes, under = m[f"coke/h{head}_min_size"], m[f"coke/h{head}_under_bound"]
        max_sizes = m[f"coke/h{head}_max_size"]
        assert len(min_sizes) == len(under) == 4
        for low, high, fraction in zip(min_sizes, max_sizes, under):
            assert (fraction > 0) == (low < bound - 1e-4), (head, low, bound, fraction)  # reported iff violated
            assert low <= seen / k <= high
        assert min_sizes[-1] >= 0.9 * bound, (head, min_sizes, bound)  # no cluster ends >10% under the bound
        assert all(0 <= d for d in m[f"coke/h{head}_dual_min"])
        assert m[f"coke/h{head}_changed"][0] == 0.0 and 0 < m[f"coke/h{head}_changed"][-1] <= 1
    for level in ("fine", "coarse"):
        assert len(m[f"coke/nmi_{level}"]) == 4 and all(0 <= v <= 1 for v in m[f"coke/nmi_{level}"])
    # The clustering works on the features: NMI with the fine classes above what a random balanced assignment of the
    # 768 images into 16 clusters gets (mean 0.036, 99th percentile 0.049 over 400 draws). Not a learning claim: the
    # lr-0 control's clusters of random-init features score 0.044 to 0.083, level with the fit's (0.057 to 0.073;
    # over the control -0.014 to +0.021 at COKE_TEST_SEED 0-9).
    assert m["coke/nmi_fine"][-1] > 0.046

    # benchmarks/coke_churn.py reads the run: fractions of disagreeing labels, per head, with and without duals.
    churn = load_benchmark("coke_churn")
    rows = churn.churn_table(*churn.load_run(run_dir / "checkpoints" / "last.ckpt", images=200), seed=0)
    assert [(r["head"], r["K"], r["duals"]) for r in rows] == [(0, 16, "with"), (0, 16, "without"),
                                                                (1, 32, "with"), (1, 32, "without")]
    for row in rows:
        assert all(0 <= row[key] <= 1 for key in ("aug vs aug", "clean vs aug", "stored vs aug", "NMI clean/fine"))
        assert row["margin"] >= 0 and row["dual max"] >= row["dual mean"] >= 0 and 1 <= row["clusters used"] <= row["K"]
    assert rows[0]["duals"] == "with" and rows[1]["dual mean"] == rows[0]["dual mean"]

    state = clustering_state(last_checkpoint(run_dir))
    assert state["epoch"].item() == 4
    assert (state["label_memory"] >= 0).float().mean() > 0.95
    assert torch.allclose(state["centers"].norm(dim=1), torch.ones(48), atol=1e-5)
    assert torch.equal(state["prev_centers"], state["centers"])  # frozen at the last epoch end
    assert (state["counters"] == 0).all()  # reset at every epoch end


# quick.yaml's departures from coke_cifar10_paper.yaml (checked against quick.yaml below).
QUICK_DEPARTURES = ("augment.clean_view=true", "method.clean_view.assign_on=clean", "method.kmeans_start.init=kmeans",
                    "method.init_epochs=0", "method.projection_weight=1.0", "augment.min_scale=0.5",
                    "method.soft_target.weight=0.3", "method.instance_term.weight=10.0", "optim.name=lars",
                    "optim.lr=1.2")
# 25 epochs on 2,500 images, clusters bounded at 20 and 10 instances.
TRAIN_BUDGET = ("data.subset=250", "method.num_clusters=[50,100]", "trainer.max_epochs=25",
                "trainer.check_val_every_n_epoch=25")


def frozen_knn_fine(spec, out: Path, cifar10_tar: Path, cache_dir: Path, *extra: str) -> float:
    """evaluate.py's kNN-20 fine top-1 on frozen features: bank = the 2,500 training images, 3,000 test images."""
    assert evaluate.main([str(spec), "protocol=knn", "levels=fine", "knn.ks=[20]", "data.subset=250",
                          "data.eval_subset=300", "data.num_workers=0", "feature_cache=false", "logger.kind=none",
                          f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", f"out_dir={out}", *extra]) == 0
    report = json.loads((out / "report.json").read_text())
    return next(r["value"] for r in report["results"] if r["protocol"] == "knn" and r["metric"] == "top1")


def test_the_learning_test_trains_quick_yamls_method_augmentation_and_optimiser():
    quick = to_plain(load_config("configs/pretrain/quick.yaml", (), method_schemas()))
    for override in QUICK_DEPARTURES:
        key, value = override.split("=")
        node = quick
        for part in key.split("."):
            node = node[part]
        assert str(node).lower() == value.lower(), key


def test_quick_setting_beats_a_random_init_backbone_on_frozen_knn(tmp_path, cifar10_tar, cache_dir):
    """quick.yaml's departures from the paper (clean-image assignment, k-means start, the projection's loss, the
    clean image's soft target, the instance-level term, LARS, weaker crops), 25 epochs on 2,500 images: the frozen
    features beat the same backbone at random init on held-out test images (kNN, as the README's figure)."""
    run_dir = run(ONE_VIEW, tmp_path, cifar10_tar, cache_dir, *QUICK_DEPARTURES, *TRAIN_BUDGET)
    trained = frozen_knn_fine(run_dir / "checkpoints" / "last.ckpt", tmp_path / "eval-trained", cifar10_tar, cache_dir)
    random_init = frozen_knn_fine("random", tmp_path / "eval-random", cifar10_tar, cache_dir,
                                  "model.backbone=test_resnet", "model.cifar_stem=false", f"seed={SEED}")
    control_dir = run(ONE_VIEW, tmp_path / "control", cifar10_tar, cache_dir, *QUICK_DEPARTURES, *TRAIN_BUDGET,
                      *LR0_CONTROL)
    control = frozen_knn_fine(control_dir / "checkpoints" / "last.ckpt", tmp_path / "eval-control", cifar10_tar, cache_dir)
    print(f"MEASURED coke_quick_knn_gain_over_random={trained - random_init:.4f} "
          f"coke_quick_knn_gain_over_lr0={trained - control:.4f}")
    # Measured on cpu2 (benchmarks/RESULTS.md §7), COKE_TEST_SEED 0-4, in points: over random init +9.7, +8.1, +10.2,
    # +9.7, +8.7; over the control +6.0, +8.3, +10.2, +9.6, +7.9. Each threshold sits 3 points or more under the worst.
    assert trained > random_init + 0.03, (trained, random_init)
    assert trained > control + 0.03, (trained, control)
