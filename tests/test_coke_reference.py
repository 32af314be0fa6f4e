"""CoKe's numbers do not move: every shipped CoKe config and every variant trains its few steps on fixed real images
to the losses, labels, gradients and clustering state recorded before CoKe became a package (tests/coke_reference.py,
tests/fixtures/coke_reference.json), and checkpoints written by that code load and resume to the same numbers."""
from __future__ import annotations

import json

import pytest
import torch

from coke_reference import CASES, CHECKPOINTS, FIXTURE, checkpoint_path, record
from lightning_modules.registry import method_class

pytestmark = pytest.mark.slow
REFERENCE = json.loads(FIXTURE.read_text())


def assert_same_numbers(got: dict, want: dict) -> None:
    assert len(got["steps"]) == len(want["steps"])
    for step, (g, w) in enumerate(zip(got["steps"], want["steps"])):
        assert g["labels"] == w["labels"], f"step {step}: labels differ"
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-6, abs=1e-7), f"step {step}: loss differs"
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-5, abs=1e-7), f"step {step}: gradient differs"
        scale = max(w["grad_norm"], 1e-6)
        assert torch.allclose(torch.tensor(g["grad_projections"]), torch.tensor(w["grad_projections"]),
                              rtol=1e-5, atol=1e-6 * scale), f"step {step}: gradient direction differs"
    assert torch.allclose(torch.tensor(got["checksum"]), torch.tensor(want["checksum"]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_steps_match_the_reference(case, cifar10_tar):
    assert_same_numbers(record(case, cifar10_tar), REFERENCE[case])


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_an_old_checkpoint_resumes_to_the_reference(name, cifar10_tar):
    assert_same_numbers(record(name, cifar10_tar, resume=checkpoint_path(name)), REFERENCE[name])


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_an_old_checkpoint_rebuilds_from_its_own_config(name):
    """evaluate.py and resume build the module from the checkpoint's stored (old, flat) config: it must still load."""
    ckpt = torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)
    module = method_class("coke")(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"], strict=True)
    assert torch.equal(module.clustering.label_memory, ckpt["state_dict"]["clustering.label_memory"])


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_resume_accepts_an_old_checkpoint_whose_keys_moved(name, tmp_path):
    """train.py's fit check sees the old checkpoint's keys as the model loads them (stage 2 moved its buffers)."""
    from pathlib import Path

    from lightning_modules.run.resume import ResumePoint
    from lightning_modules.run.resume_match import check_fits

    ckpt = torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)
    module = method_class("coke")(**ckpt["hyper_parameters"])
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    point = ResumePoint(Path(checkpoint_path(name)), 0, None, ckpt["hyper_parameters"]["cfg"], shapes)
    check_fits(point, module, ckpt["hyper_parameters"]["cfg"], "config.yaml")  # refused before: clustering.stage2.*
