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


def test_a_run_that_stops_is_named_in_one_paragraph_and_the_rows_before_it_are_kept(tmp_path, cifar10_tar, cache_dir,
                                                                                  capsys):
    """100 images at batch 128 make no step: train.py says so, the benchmark names the run and exits non-zero, and
    the random-init row it had scored is still tabled."""
    horizon = load_benchmark("secu_horizon")
    data = [f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}"]
    out = tmp_path / "horizon"
    assert horizon.main(["--epochs", "1", "--seeds", "0", "--subset", "10", "--out", str(out), "--set", *data,
                         "--eval-set", *data, "data.subset=20", "data.eval_subset=20", "linear.epochs=5"]) == 1

    err = capsys.readouterr().err
    assert "fewer than one batch" in err  # train.py's own paragraph
    assert "secu_horizon: train.py stopped on the run official-lr0-seed0" in err and "Traceback" not in err
    assert [r["row"] for r in json.loads((out / "secu_horizon.json").read_text())] == ["random init"]
    assert "| random init | 0 |" in (out / "secu_horizon.md").read_text()
