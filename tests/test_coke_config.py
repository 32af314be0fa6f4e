"""CoKe's typed config refuses bad choices and bad combinations when it loads (so --print-config and budget.py's
up-front check stop before anything runs), and the old flat keys (`beta`, ...) still load, moved, with a notice."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import torch

from configs.loader import ConfigError, load_config, to_plain
from lightning_modules.coke.config import CoKeConfig
from lightning_modules.registry import method_schemas
from training_utils import load_benchmark

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs" / "pretrain").glob("coke_*.yaml")) + [REPO / "configs" / "pretrain" / "quick.yaml"]
ONE_VIEW = REPO / "configs" / "pretrain" / "coke_cifar10_paper.yaml"
# An old key, a value, the new key: one per renamed key.
OLD_KEYS = [("beta", 0.5, "projection_weight"), ("assign_on", "clean", "clean_view.assign_on"),
            ("assign_momentum", 0.9, "clean_view.momentum"), ("clean_target_weight", 0.3, "soft_target.weight"),
            ("clean_target_temperature", 0.1, "soft_target.temperature"),
            ("clean_target_sinkhorn", 3, "soft_target.sinkhorn_iterations"),
            ("clean_contrast_weight", 2.0, "instance_term.weight"),
            ("clean_contrast_temperature", 0.3, "instance_term.temperature"),
            ("cluster_loss_weight", 0.5, "instance_term.cluster_weight"), ("target", "current", "target.label"),
            ("center_carry", 0.5, "carried_members.fraction"), ("cluster_init", "kmeans", "kmeans_start.init"),
            ("kmeans_iterations", 4, "kmeans_start.iterations")]
CLEAN = ["augment.clean_view=true", "augment.num_large_crops=1"]


def load(path, *overrides):
    return load_config(path, list(overrides), method_schemas())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_coke_config_loads_in_the_new_layout_without_a_notice(config, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = to_plain(load(config))
    assert not [r for r in caplog.records if "is now method." in r.getMessage()]
    assert set(CoKeConfig.RENAMED).isdisjoint(k for k, v in cfg["method"].items() if not isinstance(v, dict))
    buffer = io.BytesIO()
    torch.save(cfg, buffer)  # what a checkpoint stores: plain containers, no Enum objects
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["method"]["clean_view"]["assign_on"] in ("view", "clean")


@pytest.mark.parametrize("old, value, new", OLD_KEYS)
def test_an_old_key_loads_at_its_new_place_with_a_one_line_notice(old, value, new, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load(ONE_VIEW, *CLEAN, "method.clean_view.assign_on=clean", f"method.{old}={value}")
    section, _, leaf = new.rpartition(".")
    node = cfg.method[section] if section else cfg.method
    assert str(getattr(node, leaf).value if hasattr(getattr(node, leaf), "value") else getattr(node, leaf)) \
        == str(value)
    notices = [r.getMessage() for r in caplog.records if "is now method." in r.getMessage()]
    assert notices == [f"config key method.{old} (from the command line) is now method.{new}: "
                       f"read as method.{new}={value}"]


def test_old_keys_in_a_yaml_file_load_too(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(f"_base_: {ONE_VIEW}\naugment:\n  clean_view: true\nmethod:\n  assign_on: clean\n  beta: 1.0\n"
                   "  target: current\n  cluster_init: kmeans\n")
    m = load(old).method
    assert (m.clean_view.assign_on.value, m.projection_weight, m.target.label.value, m.kmeans_start.init.value) \
        == ("clean", 1.0, "current", "kmeans")


@pytest.mark.parametrize("override, key", [("method.assign_on=cleen", "method.clean_view.assign_on"),
                                           ("method.clean_view.assign_on=cleen", "method.clean_view.assign_on"),
                                           ("method.stage2_rule=official", "method.stage2_rule"),
                                           ("method.view_loss=offical", "method.view_loss"),
                                           ("method.kmeans_start.init=kmeanz", "method.kmeans_start.init")])
def test_a_typo_in_a_choice_is_refused_at_load_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(ONE_VIEW, override)


@pytest.mark.parametrize("overrides, message", [
    (["method.clean_view.assign_on=clean"], "needs the un-augmented image: set augment.clean_view=true"),
    (["augment.clean_view=true", "augment.num_large_crops=2", "method.clean_view.assign_on=clean"],
     "is a one-view option"),
    (["method.clean_view.momentum=0.9"], "method.clean_view.momentum works on the clean image"),
    (["method.soft_target.weight=0.5"], "method.soft_target.weight works on the clean image"),
    (["method.instance_term.weight=1.0"], "method.instance_term.weight works on the clean image"),
    ([*CLEAN, "method.clean_view.assign_on=clean", "method.clean_view.momentum=1.0"], r"must be in \[0, 1\)"),
    (["method.carried_members.fraction=1.0"], r"carried_members.fraction must be in \[0, 1\)"),
])
def test_a_bad_combination_is_refused_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(ONE_VIEW, *overrides)


@pytest.mark.parametrize("overrides, keys", [
    (["method.stage2_epochs=2", "augment.num_large_crops=2"], ["method.stage2_epochs", "augment.num_large_crops=1"]),
    (["augment.num_large_crops=3"], ["augment.num_large_crops=3", "augment.num_small_crops"]),
    (["method.projection_weight=0.5", "model.pred_hidden_dim=0"],
     ["method.projection_weight=0.5", "model.pred_hidden_dim", "method.projection_weight=0"]),
])
def test_a_silent_combination_is_refused_at_load_naming_the_keys_and_the_fix(overrides, keys):
    with pytest.raises(ConfigError) as refused:
        load(ONE_VIEW, *overrides)
    message = str(refused.value)
    assert all(key in message for key in keys) and "\n" not in message, message


def test_projection_weight_with_a_predictor_loads():
    assert load(ONE_VIEW, "method.projection_weight=0.5").method.projection_weight == 0.5


def test_a_coke_key_out_of_range_is_refused_by_the_rules():
    with pytest.raises(ConfigError, match=r"method\.soft_target\.weight=2\.0` is out of range"):
        load(ONE_VIEW, *CLEAN, "method.clean_view.assign_on=clean", "method.soft_target.weight=2.0")


def test_the_method_reads_its_plain_config_back_as_enums():
    """train.py hands the method plain containers; `typed` (the method's boundary) gives the parts the Enums."""
    from lightning_modules.coke.config import CoKeConfig, Stage2Rule, ViewLoss, typed

    m = typed(to_plain(load(ONE_VIEW, "method.view_loss=faithful", "method.stage2_rule=legacy"))["method"])
    assert isinstance(m, CoKeConfig) and m.view_loss is ViewLoss.faithful and m.stage2_rule is Stage2Rule.legacy


def test_print_config_refuses_a_bad_combination(capsys):
    import train
    from lightning_modules.run.cli_errors import run_cli

    status = run_cli(train.main, [str(ONE_VIEW), "method.clean_view.assign_on=clean", "--print-config"])
    out = capsys.readouterr()
    assert status == 2 and "augment.clean_view=true" in out.err and "method:" not in out.out


def test_budget_refuses_a_bad_combination_before_any_row_trains(tmp_path):
    budget = load_benchmark("budget")
    args = budget.parse_args(["--rows", "coke", "--variant", "bad=coke_cifar10_paper:method.assign_on=cleen",
                              "--out", str(tmp_path)])
    problems = budget.config_problems(args)
    assert len(problems) == 1 and problems[0].startswith("row bad:") and "method.clean_view.assign_on" in problems[0]


def test_more_clusters_than_images_is_one_paragraph_before_any_run(tmp_path, cifar10_tar, cache_dir, capsys):
    import train
    from lightning_modules.run.cli_errors import run_cli

    code = run_cli(train.main, ["configs/pretrain/quick.yaml", f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}",
                       "data.subset=5", "data.batch_size=16", f"run_dir={tmp_path / 'runs'}", "logger.kind=csv"])
    assert code == 2
    err = capsys.readouterr().err
    assert "more clusters than the 50 training images" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
