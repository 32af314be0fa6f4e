"""benchmarks/secu_horizon.py end to end on real CIFAR-10, at a budget of seconds: random init, the lr-0 control and
the official row at two lengths are trained, scored by evaluate.py, tabled and drawn. Both lengths lie inside SeCu's
frozen official epoch of 50,000 images, so the network never moves and the 2-epoch row is its own control."""
import json

import pytest

from training_utils import load_benchmark

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_the_curve_is_scored_against_its_control_tabled_and_drawn(tmp_path, cifar10_tar, cache_dir):
    horizon = load_benchmark("secu_horizon")
    data = [f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}"]
    out = tmp_path / "horizon"
    assert horizon.main(["--epochs", "1", "2", "--seeds", "0", "--subset", "20", "--batch-size", "64",
                         "--out", str(out), "--set", *data,
                         "--eval-set", *data, "data.subset=20", "data.eval_subset=20", "linear.epochs=5"]) == 0

    rows = json.loads((out / "secu_horizon.json").read_text())
    assert [(r["row"], r["epochs"]) for r in rows] == [
        ("random init", 0), ("official lr-0 control", 2), ("official", 1), ("official", 2)]
    control, one, two = rows[1], rows[2], rows[3]
    for r in (one, two):
        for metric in ("kNN-200", "linear"):
            assert r[f"Δ {metric}"] == pytest.approx(r[metric] - control[metric])
        assert 0 <= r["churn"] <= 1 and 0 <= r["NMI h0"] <= 1 and r["centre norm"] > 0
    # Frozen: the 2-epoch run makes exactly the control's updates (centres and duals move, the network does not).
    assert (two["kNN-200"], two["linear"], two["kNN-20"]) == (control["kNN-200"], control["linear"], control["kNN-20"])
    table = (out / "secu_horizon.md").read_text()
    assert "secu_cifar10.yaml, test_resnet (no CIFAR stem), 20 images per class, batch 64" in table
    assert (out / "secu_horizon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
