"""Config errors name the key and the closest valid one; the command line exits non-zero before any work."""
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


def _train(capsys, *args):
    """train.py's command line in this process (a subprocess would spend its time importing torch): (status, out)."""
    import train
    from lightning_modules.run.cli_errors import run_cli

    status = run_cli(train.main, [str(REPO / args[0]), *args[1:]])
    return status, capsys.readouterr()


def test_cli_typo_exits_nonzero_before_work(capsys):
    status, out = _train(capsys, "configs/pretrain/quick.yaml", "optim.lrr=1")
    assert status == 2
    assert "optim.lrr" in out.err and "optim.lr" in out.err
    status, out = _train(capsys, "configs/pretrain/quick.yaml", "trainer.max_epoch=3")
    assert status == 2 and "trainer.max_epochs" in out.err


def test_cli_print_config_shows_resolved_values(capsys):
    status, out = _train(capsys, "configs/pretrain/quick.yaml", "optim.lr=0.7", "--print-config")
    assert status == 0, out.err
    assert "lr: 0.7" in out.out and "backbone: resnet10t" in out.out and "root:" in out.out
