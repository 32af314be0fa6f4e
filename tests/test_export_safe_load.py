"""Backbone export loads into plain timm with a strict load_state_dict; pickled code in a checkpoint is refused."""
import builtins
import json
import os
import pickle

import pytest
import timm
import torch
from safetensors.torch import load_file

import evaluate
from lightning_modules.backbone import build_backbone
from lightning_modules.checkpoints.safe_load import UnsafeCheckpointError
from lightning_modules.checkpoints.sources import build_eval_backbone, load_source
from test_evaluate import run_eval, write_checkpoint


def _original_backbone(ckpt):
    source = load_source(str(ckpt))
    cfg = source.pretrain_cfg["model"]
    model, _ = build_backbone(cfg["backbone"], cfg["cifar_stem"])
    model.load_state_dict(source.backbone_state)
    return model.eval()


@pytest.mark.parametrize("backbone, cifar_stem", [("resnet10t", False), ("resnet18", True)])
def test_export_reloads_through_timm_with_identical_features(tmp_path, backbone, cifar_stem):
    ckpt = write_checkpoint(tmp_path / "last.ckpt", backbone=backbone, cifar_stem=cifar_stem)
    out = tmp_path / "export" / "backbone.safetensors"
    assert evaluate.main([str(ckpt), f"export={out}"]) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model"] == {"backbone": backbone, "cifar_stem": cifar_stem, "kwargs": {}}
    if cifar_stem:  # the same stem swap train.py made, then a plain strict load
        reloaded, _ = build_backbone(backbone, cifar_stem=True)
    else:
        reloaded = timm.create_model(backbone, pretrained=False, num_classes=0)
    reloaded.load_state_dict(load_file(str(out)), strict=True)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(images), _original_backbone(ckpt)(images))


def test_exported_file_evaluates_like_its_checkpoint(tmp_path, cifar10_tar, cache_dir):
    ckpt = write_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    out = tmp_path / "backbone.safetensors"
    assert evaluate.main([str(ckpt), f"export={out}"]) == 0
    quick = ["protocol=knn,retrieval", "levels=fine", "knn.ks=[5]", "feature_cache=false"]
    from_ckpt = run_eval(ckpt, tmp_path, cifar10_tar, cache_dir, *quick)
    from_file = run_eval(out, tmp_path, cifar10_tar, cache_dir, *quick)  # settings from the sidecar only
    assert from_file["checkpoint"]["kind"] == "safetensors" and from_file["checkpoint"]["epochs"] == 3
    assert [r["value"] for r in from_file["results"]] == [r["value"] for r in from_ckpt["results"]]


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _RunsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [_RunsShell, _RunsEval])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_checkpoint_with_pickled_code_is_refused_and_nothing_runs(tmp_path, capsys, payload, writer):
    marker = tmp_path / "payload-ran"
    ckpt = tmp_path / "evil.ckpt"
    content = {"state_dict": {"backbone.w": torch.zeros(1)}, "hyper_parameters": payload(marker)}
    if writer == "torch.save":
        torch.save(content, ckpt)
    else:
        with open(ckpt, "wb") as f:
            pickle.dump(content, f)
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt") as err:
        load_source(str(ckpt))
    assert "refused" in str(err.value) and ("system" in str(err.value) or "eval" in str(err.value))
    assert evaluate.main([str(ckpt)]) == 2
    message = capsys.readouterr().err
    assert str(ckpt) in message and "nothing in it was executed" in message
    assert not marker.exists()


def test_weights_that_do_not_fit_the_backbone_are_named(tmp_path):
    source = load_source(str(write_checkpoint(tmp_path / "c.ckpt", backbone="resnet10t")))
    from omegaconf import OmegaConf

    wrong = OmegaConf.create({"backbone": "resnet18", "cifar_stem": False, "kwargs": {}})
    with pytest.raises(ValueError, match="do not fit model.backbone=resnet18"):
        build_eval_backbone(source, wrong)
