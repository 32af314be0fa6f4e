"""CoKe's numbers do not move: every shipped CoKe config and every variant trains its few steps on fixed real images
to the losses, labels, gradients and clustering state of tests/fixtures/coke_reference.json (tests/coke_reference.py
says how they were recorded), and checkpoints written by the code before CoKe became a package load and resume to the
same numbers.

The steps run in float64, so the tolerances hold on any machine: between AVX-512, AVX2 and scalar (SSE) kernels
(ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA) the numbers of all 16 cases differed by at most
1.4e-14 (loss), 3.3e-14 (gradient norm), 3.2e-13 (gradient projections, relative to the norm) and 8.3e-12
(clustering checksum), with every label equal (benchmarks/RESULTS.md §8). The tolerances sit 1,000 times above that
and far below what a changed rule moves: the planted changes at the end must fail."""
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
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-11, abs=1e-12), f"step {step}: loss differs"
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-10, abs=1e-12), f"step {step}: gradient differs"
        scale = max(w["grad_norm"], 1e-6)
        assert torch.allclose(torch.tensor(g["grad_projections"], dtype=torch.float64),
                              torch.tensor(w["grad_projections"], dtype=torch.float64),
                              rtol=1e-9, atol=1e-9 * scale), f"step {step}: gradient direction differs"
    assert torch.allclose(torch.tensor(got["checksum"], dtype=torch.float64),
                          torch.tensor(want["checksum"], dtype=torch.float64), rtol=1e-9, atol=1e-9), "state differs"


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


def halved_dual_step(original):
    def dual_step(duals, counts, target, batch_size, lr, clamp):
        return original(duals, counts, target, batch_size, lr / 2, clamp)
    return dual_step


def one_swapped_target(original):
    def step(self, x, index, coarse=None):
        previous = original(self, x, index, coarse)
        return torch.cat([previous[1:2], previous[:1], previous[2:]])  # the batch's first two targets swapped
    return step


@pytest.mark.parametrize("case", ["default", "paper"])
@pytest.mark.parametrize("plant", ["dual step at half its lr", "two targets swapped"])
def test_a_planted_rule_change_fails_the_reference(case, plant, cifar10_tar, monkeypatch):
    """The tolerances are not too loose: one changed rule must move the numbers past them."""
    import ops.coke_state
    import ops.coke_update

    if plant == "dual step at half its lr":
        monkeypatch.setattr(ops.coke_update, "dual_step", halved_dual_step(ops.coke_update.dual_step))
    else:
        monkeypatch.setattr(ops.coke_state.CokeState, "step", one_swapped_target(ops.coke_state.CokeState.step))
    with pytest.raises(AssertionError, match="differ"):
        assert_same_numbers(record(case, cifar10_tar), REFERENCE[case])
