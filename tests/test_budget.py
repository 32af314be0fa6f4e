"""benchmarks/budget.py end to end on real CIFAR-10, at a budget of seconds: every row trains for the budget, is
scored by evaluate.py against the random-init row, and lands in budget.md, budget.json and budget.png."""
import json
import math

import pytest

from training_utils import load_benchmark

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_two_rows_and_random_init_are_trained_scored_tabled_and_drawn(tmp_path, cifar10_tar, cache_dir):
    budget = load_benchmark("budget")
    data = [f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}"]
    out = tmp_path / "budget"
    small_coke = "coke-small=coke_cifar10:method.num_clusters=[10,20],optim.lr=0.4"
    assert budget.main([
        "--minutes", "0.05", "--rows", "simclr", "--variant", small_coke,
        "--seeds", "0", "--backbone", "test_resnet", "--batch-size", "64", "--subset", "20", "--device", "cpu",
        "--out", str(out),
        "--set", *data, "model.proj_hidden_dim=128", "model.pred_hidden_dim=128",
        "--eval-set", *data, "data.subset=20", "data.eval_subset=10", "linear.epochs=5", "data.num_workers=0",
    ]) == 0

    rows = json.loads((out / "budget.json").read_text())
    assert [r["row"] for r in rows] == ["random init", "simclr", "coke-small"]
    assert rows[0]["epochs"] == 0 and rows[0]["train min"] == 0
    for r in rows:
        for key in ("kNN-200 fine", "linear fine", "kNN-200 coarse", "linear coarse"):
            assert 0 <= r[key] <= 100, (r["row"], key, r[key])
    for r in rows[1:]:
        assert r["epochs"] >= 1 and r["train min"] > 0 and r["images/s"] > 0 and math.isfinite(r["images/s"])
    table = (out / "budget.md").read_text()
    assert "0.05 training min per row, test_resnet" in table
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "row" not in line] \
        == ["random init", "simclr", "coke-small"]
    assert (out / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in ("random-seed0", "simclr-seed0", "coke-small-seed0"):  # evaluate.py's own report per row
        assert (out / row / "eval" / "report.json").is_file()


def test_a_bad_key_in_any_row_stops_before_anything_trains_or_is_written(tmp_path, capsys):
    budget = load_benchmark("budget")
    out = tmp_path / "budget"
    assert budget.main(["--minutes", "0.01", "--rows", "simclr",
                        "--variant", "broken=coke_cifar10:method.no_such_option=1",
                        "--device", "cpu", "--out", str(out), "--eval-set", "linear.no_such_option=1"]) == 2
    err = capsys.readouterr().err
    assert "row broken: unknown config key `method.no_such_option`" in err and "Nothing was trained" in err
    assert "--eval-set: unknown config key `linear.no_such_option`" in err
    assert "row simclr" not in err and "Traceback" not in err
    assert not out.exists()


def test_a_row_that_fails_while_running_is_named_and_the_exit_code_is_non_zero(tmp_path, cifar10_tar, cache_dir,
                                                                                capsys):
    """The rows that finished are still tabled; missing evaluation data only shows once a row is scored."""
    budget = load_benchmark("budget")
    out = tmp_path / "budget"
    data = [f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}"]
    assert budget.main(["--minutes", "0.01", "--rows", "simclr", "--no-random", "--backbone", "test_resnet",
                        "--batch-size", "64", "--subset", "10", "--device", "cpu", "--out", str(out),
                        "--set", *data, "model.proj_hidden_dim=64",
                        "--eval-set", f"data.path={tmp_path / 'missing.tar.gz'}", f"data.cache_dir={cache_dir}"]) == 1
    assert "1 row(s) failed, tracebacks above: simclr (seed 0)" in capsys.readouterr().err
    assert (out / "budget.md").is_file()
