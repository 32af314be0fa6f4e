"""On CUDA: no synchronisation in the training loop except on logging steps, through each method's later phases
(test_host_reads.PHASES), through train.py in bf16 with channels-last (``torch.cuda.set_sync_debug_mode`` reports
each one with its source line). Skipped without CUDA; benchmarks/gpu_suite.sh runs it."""
import pytest
import torch

from lightning_modules.run.host_reads import CudaSyncs
from test_host_reads import later_phase_run, reads_outside_logging, train_counting_reads

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ON_CUDA = ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "model.channels_last=true"]
# The GPU suite's minutes are few: one-view CoKe as shipped and as the paper, SimCLR, and SeCu (Triton assignment,
# two separate forwards); the CPU test holds every method, the profile stage lists CoKe's and SimCLR's syncs.
ON_GPU = ["coke", "coke_paper", "simclr", "secu"]


@pytest.mark.parametrize("method", ON_GPU)
def test_no_cuda_sync_between_logging_steps(method, tmp_path, cifar10_tar, cache_dir, monkeypatch):
    config, overrides = later_phase_run(method)  # through the queue, stage 2 and the warm-up's end, as on the CPU
    syncs = train_counting_reads(config, [*overrides, *ON_CUDA], tmp_path, cifar10_tar, cache_dir, monkeypatch,
                                 reads=CudaSyncs())
    assert reads_outside_logging(syncs, exempt=set()) == {}
