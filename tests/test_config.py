"""Config errors name the key and the closest valid one; the command line exits non-zero before any work."""
import subprocess
import sys
from pathlib import Path

import pytest

from configs.loader import ConfigError, load_config
from configs.schema import DATA_ROOT_ENV

REPO = Path(__file__).resolve().parent.parent


def test_overrides_merge_over_yaml_over_schema():
    from lightning_modules.registry import method_schemas

    cfg = load_config("configs/pretrain/quick.yaml", ["optim.lr=0.5", "trainer.devices=1"], method_schemas())
    assert cfg.optim.lr == 0.5  # command line
    assert cfg.model.backbone == "resnet10t"  # quick.yaml
    assert cfg.method.name == "coke"  # inherited through _base_
    assert cfg.method.stage2_temperature == 0.5  # CoKe's own schema default
    assert cfg.data.val_fraction == 0.0  # schema default
    assert cfg.trainer["devices"] == 1 and cfg.trainer["precision"] == 32


@pytest.mark.parametrize(
    "override, key, suggestion",
    [("optim.lrr=1", "optim.lrr", "optim.lr"), ("data.batch_sise=8", "data.batch_sise", "data.batch_size"),
     ("augment.min_scal=0.1", "augment.min_scal", "augment.min_scale")],
)
def test_unknown_key_names_key_and_nearest(override, key, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert f"`{key}`" in str(err.value) and f"`{suggestion}`" in str(err.value)


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError, match=r"`optim.lr` expects float"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"`data.batch_size` expects int"):
        load_config(None, ["data.batch_size=1.5"])


def test_unknown_key_in_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  weight_decai: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim.weight_decai.*optim.weight_decay"):
        load_config(bad)


def test_data_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert load_config(None).data.root == str(tmp_path)


def _train(*args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_cli_typo_exits_nonzero_before_work():
    out = _train("configs/pretrain/quick.yaml", "optim.lrr=1")
    assert out.returncode == 2
    assert "optim.lrr" in out.stderr and "optim.lr" in out.stderr
    out = _train("configs/pretrain/quick.yaml", "trainer.max_epoch=3")
    assert out.returncode == 2 and "trainer.max_epochs" in out.stderr


def test_cli_print_config_shows_resolved_values():
    out = _train("configs/pretrain/quick.yaml", "optim.lr=0.7", "--print-config")
    assert out.returncode == 0, out.stderr
    assert "lr: 0.7" in out.stdout and "backbone: resnet10t" in out.stdout and "root:" in out.stdout
