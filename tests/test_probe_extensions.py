"""The SeA probe's perturbation, few-shot sampling and curve, the feature diagnostics and the map, the
pretraining diagnostics callback, and the three protocols end to end through evaluate.py (real CIFAR-10 subsets)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from configs.eval_schema import EvalConfig
from lightning_modules.evaluation.registry import selected_protocols
from configs.loader import load_config
from lightning_modules.evaluation.diagnostics import spread_rows
from lightning_modules.evaluation.features import FeatureSet
from lightning_modules.evaluation.fewshot import run_fewshot, sample_per_class
from lightning_modules.evaluation.figures import feature_map
from lightning_modules.evaluation.sea import SeAProbe, run_sea
from ops.diagnostics import (class_alignment, class_centroids, effective_rank, pair_alignment, superclass_collapse,
                             uniformity)
from ops.sea import sea_augment, sea_direction, sea_perturbation

pytestmark = pytest.mark.usefixtures("one_thread")
E = math.e


def _blobs(n_per_class, generator, means, noise=1.0):
    fine = torch.arange(means.shape[0]).repeat_interleave(n_per_class)
    return FeatureSet(means[fine] + noise * torch.randn(len(fine), means.shape[1], generator=generator), fine, fine // 3)


def _eval_cfg(*overrides):
    return load_config(None, list(overrides), schema=EvalConfig)


# ---------------------------------------------------------------------------------------------------- SeA
def test_sea_direction_matches_a_hand_computed_case():
    x = torch.eye(3)  # e1, e2, e3: unit, orthogonal
    grad = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    d = sea_direction(x, grad, alpha=1.0)
    # row 0: g = e2 -> softmax over j in {1, 2} of <e2, x_j> = (1, 0): weights (e, 1) / (e + 1), self weight 0
    torch.testing.assert_close(d[0], torch.tensor([0.0, E, 1.0]) / math.sqrt(E**2 + 1))
    # row 1: zero gradient -> uniform over the others -> (e1 + e3) / sqrt(2)
    torch.testing.assert_close(d[1], torch.tensor([1.0, 0.0, 1.0]) / math.sqrt(2))
    # row 2: g = (e1 + e2) / sqrt(2) -> equal scores for x_0 and x_1 -> (e1 + e2) / sqrt(2)
    torch.testing.assert_close(d[2], torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    step = sea_perturbation(x, grad, alpha=1.0, eta=0.8)
    torch.testing.assert_close(step.norm(dim=1), torch.full((3,), 0.8))
    moved = sea_augment(x, grad, alpha=1.0, eta=0.8)
    torch.testing.assert_close(moved[1], F.normalize(torch.tensor([0.8 / math.sqrt(2), 1.0, 0.8 / math.sqrt(2)]), dim=0))


def test_sea_step_lies_in_the_span_of_the_other_examples_with_the_configured_norm():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(6, 16, generator=g), dim=1)  # 6 rows in 16-d: spans are proper subspaces
    grad = torch.randn(2, 6, 16, generator=g)  # two heads, each its own gradient
    etas = torch.tensor([0.3, 0.8]).view(2, 1, 1)
    step = sea_perturbation(x, grad, alpha=0.01, eta=etas)
    torch.testing.assert_close(step.norm(dim=-1), etas.squeeze(-1).expand(2, 6))
    for i in range(6):
        others = torch.cat([x[:i], x[i + 1:]])  # (5, 16)
        projector = others.T @ torch.linalg.pinv(others.T)
        for h in range(2):
            torch.testing.assert_close(projector @ step[h, i], step[h, i], atol=1e-5, rtol=1e-4)
        # and not in the span of the row itself alone: its own row had zero weight
        assert (step[:, i] - (step[:, i] @ x[i])[:, None] * x[i]).norm(dim=-1).min() > 1e-3
    assert torch.equal(sea_direction(x[:1], grad[0, :1], 0.01), torch.zeros(1, 16))  # no other example


def test_sea_probe_gradient_is_each_heads_own_and_leaves_the_weights_untouched():
    g = torch.Generator().manual_seed(1)
    probe = SeAProbe(8, 3, [{"lr": 0.1, "weight_decay": 0.0, "eta": 0.5}] * 2, alpha=0.01, temperature=0.1)
    x, y = F.normalize(torch.randn(5, 8, generator=g), dim=1), torch.tensor([0, 1, 2, 0, 1])
    grad = probe.adversarial_grad(x, y)
    for h, head in enumerate(probe.heads):
        single = x.clone().requires_grad_(True)
        (0.1 * F.cross_entropy(head(single) / 0.1, y)).backward()
        torch.testing.assert_close(grad[h], single.grad)
        head.weight.grad = None
    grad = probe.adversarial_grad(x, y)
    assert all(head.weight.grad is None for head in probe.heads)


def test_sea_probe_separates_separable_features_and_names_its_choice():
    g = torch.Generator().manual_seed(0)
    means = 6 * torch.randn(9, 32, generator=g)
    train, test = _blobs(40, g, means), _blobs(20, g, means)
    cfg = _eval_cfg("sea.epochs=15", "sea.batch_size=64", "sea.lrs=[0.4,1.6]", "sea.etas=[0.8]").sea
    rows = run_sea(train, test, ["fine", "coarse"], {"fine": 9, "coarse": 3}, torch.arange(9) // 3, cfg, 0.2,
                   accelerator="cpu")
    values = {(r["level"], r["metric"]): r for r in rows}
    assert values[("fine", "top1")]["value"] >= 0.97 and values[("coarse", "top1")]["value"] >= 0.97
    assert values[("fine", "top1")]["params"]["eta"] == 0.8 and values[("fine", "top1")]["params"]["val_top1"] is not None
    assert ("fine-within-superclass", "top1") in values


# ---------------------------------------------------------------------------------------------------- few-shot
def test_fewshot_sampling_takes_exactly_n_per_class_and_is_seed_deterministic():
    labels = torch.tensor([0] * 30 + [1] * 20 + [2] * 3)
    for shots in (1, 5, 10):
        rows = sample_per_class(labels, shots, seed=7)
        assert torch.bincount(labels[rows]).tolist() == [shots, shots, min(shots, 3)]
        assert len(set(rows.tolist())) == len(rows)
        assert torch.equal(rows, sample_per_class(labels, shots, seed=7))
    assert not torch.equal(sample_per_class(labels, 5, seed=0), sample_per_class(labels, 5, seed=1))
    assert torch.equal(sample_per_class(labels, 0, seed=3), torch.arange(len(labels)))


def test_fewshot_curve_rises_with_labels_on_separable_features():
    g = torch.Generator().manual_seed(0)
    means = 0.7 * torch.randn(6, 16, generator=g)  # overlapping blobs: measured 58.8, 76.7, 85.1, 86.7 (%)
    train, test = _blobs(60, g, means), _blobs(50, g, means)
    cfg = _eval_cfg("fewshot.shots=[1,5,20,0]", "fewshot.seeds=[0,1,2]", "fewshot.epochs=30").fewshot
    rows = run_fewshot(train, test, ["fine", "coarse"], {"fine": 6, "coarse": 2}, cfg, accelerator="cpu")
    fine = {r["params"]["shots"]: r for r in rows if r["level"] == "fine"}
    assert list(fine) == [1, 5, 20, "all"] and {r["level"] for r in rows} == {"fine", "coarse"}
    assert fine[1]["params"]["train_images"] == 6 and fine["all"]["params"]["train_images"] == 360
    assert fine["all"]["params"]["classes"] == 6
    assert len(fine[1]["params"]["per_seed"]) == 3 and fine[1]["params"]["std"] > 0
    curve = [fine[n]["value"] for n in (1, 5, 20, "all")]
    assert all(later >= earlier - 0.03 for earlier, later in zip(curve, curve[1:])), curve
    assert curve[-1] >= curve[0] + 0.15 and curve[-1] >= 0.8, curve


# ---------------------------------------------------------------------------------------------------- diagnostics
def test_effective_rank_of_known_spectra():
    g = torch.Generator().manual_seed(0)
    u, v = torch.linalg.qr(torch.randn(20, 3, generator=g))[0], torch.linalg.qr(torch.randn(8, 3, generator=g))[0]
    flat3 = u @ v.T  # 20 x 8 with singular values (1, 1, 1): rank 3
    assert effective_rank(flat3) == pytest.approx(3.0, rel=1e-4)
    skewed = u @ torch.diag(torch.tensor([2.0, 1.0, 1.0])) @ v.T  # p = (1/2, 1/4, 1/4): exp(entropy) = 2^1.5
    assert effective_rank(skewed) == pytest.approx(2 ** 1.5, rel=1e-4)
    assert effective_rank(torch.ones(10, 4)) == pytest.approx(1.0, rel=1e-4)


def test_alignment_and_uniformity_of_known_points():
    e = torch.eye(3)
    assert pair_alignment(torch.stack([e[0], e[0]]), torch.stack([e[1], 5 * e[0]])) == pytest.approx(1.0)  # (2 + 0) / 2
    # class 0: {e1, e2} at squared distance 2; class 1: {e3, 3 e3} (same unit point): mean over the pairs is 1
    features, labels = torch.stack([e[0], e[1], e[2], 3 * e[2]]), torch.tensor([0, 0, 1, 1])
    assert class_alignment(features, labels) == pytest.approx(1.0)
    square = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]])  # adjacent: |d|^2 = 2 (8 ordered pairs), opposite: 4 (4)
    assert uniformity(square) == pytest.approx(math.log((8 * math.exp(-4) + 4 * math.exp(-8)) / 12))
    assert uniformity(square, chunk=3) == pytest.approx(uniformity(square))
    assert uniformity(torch.ones(5, 3)) == pytest.approx(0.0)  # one point: no uniformity at all


def test_collapse_ratio_of_known_centroids():
    centroids = torch.tensor([[0.0, 0], [1, 0], [0, 10], [1, 10]])  # fine 0, 1 in superclass 0; 2, 3 in 1
    out = superclass_collapse(centroids, torch.tensor([0, 0, 1, 1]))
    assert out["within"] == pytest.approx(1.0)
    assert out["across"] == pytest.approx((10 + 10 + 2 * math.sqrt(101)) / 4)
    assert out["ratio"] == pytest.approx(1.0 / out["across"])
    feats, labels = torch.tensor([[2.0, 0], [0, 3], [0, 1]]), torch.tensor([0, 0, 2])
    means, present = class_centroids(feats, labels, 3)
    torch.testing.assert_close(means, torch.tensor([[0.5, 0.5], [0, 0], [0, 1]], dtype=torch.float64))
    assert present.tolist() == [True, False, True]


def test_spread_rows_is_even_over_classes_and_the_map_png_is_written(tmp_path):
    labels = torch.tensor([0] * 50 + [1] * 5 + [2] * 45)
    rows = spread_rows(labels, 30, seed=0)
    assert torch.bincount(labels[rows]).tolist() == [13, 5, 12] and torch.equal(rows, spread_rows(labels, 30, seed=0))
    g = torch.Generator().manual_seed(0)
    xy = torch.randn(90, 2, generator=g).numpy()
    fine = torch.arange(6).repeat_interleave(15).numpy()
    path = feature_map(xy, fine, fine // 3, [f"c{i}" for i in range(6)], ["s0", "s1"], tmp_path / "map.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


# ---------------------------------------------------------------------------------------------------- wiring
def test_all_means_the_standard_four_and_the_new_protocols_are_added_by_name():
    assert selected_protocols(_eval_cfg("protocol=[all]").protocol) == ["linear", "knn", "retrieval", "clustering"]
    assert selected_protocols(_eval_cfg("protocol=[diagnostics,all,sea]").protocol) == [
        "linear", "knn", "retrieval", "clustering", "sea", "diagnostics"]


def test_evaluate_runs_sea_fewshot_and_diagnostics_into_the_report(tmp_path, cifar10_tar, cache_dir):
    import evaluate

    out = tmp_path / "eval"
    args = ["random", "model.backbone=test_resnet", "model.cifar_stem=false", "data.subset=20", "data.eval_subset=10",
            f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", "logger.kind=none", f"out_dir={out}",
            "protocol=linear,sea,fewshot,diagnostics", "levels=fine,coarse", "linear.epochs=5", "linear.lrs=[0.1]",
            "linear.weight_decays=[0.0]", "sea.epochs=5", "sea.lrs=[1.6]", "sea.etas=[0.8]", "fewshot.epochs=5",
            "fewshot.shots=[1,5,0]", "fewshot.seeds=[0,1]", "diagnostics.map_points=60"]
    assert evaluate.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    protocols = {r["protocol"] for r in report["results"]}
    assert protocols == {"offline-linear", "sea", "fewshot", "diagnostics"}
    assert report["figures"] == {"fewshot": "fewshot.png", "map": "map.png"}
    assert all((out / f).read_bytes()[:4] == b"\x89PNG" for f in report["figures"].values())
    metrics = {(r["level"], r["metric"]) for r in report["results"] if r["protocol"] == "diagnostics"}
    assert metrics == {("none", "rankme"), ("none", "rank_fraction"), ("none", "uniformity"), ("fine", "alignment"),
                       ("coarse", "alignment"), ("fine-within-superclass", "collapse_ratio")}
    rankme = next(r for r in report["results"] if r["metric"] == "rankme")["value"]
    assert 1 <= rankme <= min(100, report["features"]["dim"])
    assert {"sea", "fewshot", "diagnostics"} <= report["timings_s"].keys()
    markdown = (out / "report.md").read_text()
    assert "## SeA beside the plain linear probe" in markdown and "| fine | top1 |" in markdown
    assert "![label efficiency](fewshot.png)" in markdown and "![feature map](map.png)" in markdown


def test_pretraining_logs_the_feature_diagnostics_every_n_epochs(tmp_path, cifar10_tar, cache_dir):
    from training_utils import metrics, run

    run_dir = run("configs/pretrain/simclr_cifar10.yaml", tmp_path, cifar10_tar, cache_dir, "data.subset=10",
                  "data.eval_subset=10", "trainer.max_epochs=2", "logger.diagnostics_every_n_epochs=1",
                  "logger.diagnostics_images=60", "logger.view_grid_every_n_epochs=0", "checkpoint.every_n_epochs=0")
    logged = metrics(run_dir)
    for key in ("diag/rankme", "diag/uniformity", "diag/alignment_fine", "diag/collapse_ratio"):
        assert len(logged[key]) == 2 and all(math.isfinite(v) for v in logged[key]), key
