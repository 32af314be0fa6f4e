"""The speed switches are config keys that run: bf16-mixed, channels_last, foreach/fused optimisers, persistent
workers and pinned memory (one tiny CPU fit), and a wrong optimiser backend is a clear error.
torch.compile (model.compile) is not tested here: compiling takes minutes on 2 CPU cores (see configs/launch/README.md)."""
import pytest
import torch
from omegaconf import OmegaConf

from lightning_modules.optim import build_optimizer
from training_utils import metrics, run


def optim_cfg(name, implementation):
    return OmegaConf.create({"name": name, "implementation": implementation, "momentum": 0.9, "betas": [0.9, 0.999]})


@pytest.mark.parametrize("name,implementation,flag", [
    ("sgd", "fused", "fused"), ("adamw", "fused", "fused"), ("sgd", "foreach", "foreach"), ("lars", "foreach", "foreach"),
])
def test_optimizer_backends_are_applied(name, implementation, flag):
    param = torch.nn.Parameter(torch.randn(4, 4))
    opt = build_optimizer(optim_cfg(name, implementation), [{"params": [param], "weight_decay": 1e-4}], 0.1, on_cuda=False)
    assert opt.defaults[flag] is True
    param.grad = torch.randn(4, 4)
    opt.step()  # the CPU implementation of that backend exists


@pytest.mark.parametrize("name,implementation,message", [
    ("lars", "fused", "LARS has no fused kernel"), ("sgd", "fusd", "unknown optim.implementation `fusd`"),
])
def test_unavailable_optimizer_backend_is_a_clear_error(name, implementation, message):
    param = torch.nn.Parameter(torch.randn(2))
    with pytest.raises(ValueError, match=message):
        build_optimizer(optim_cfg(name, implementation), [{"params": [param]}], 0.1, on_cuda=False)


@pytest.mark.slow
def test_bf16_channels_last_foreach_persistent_pinned_fit(tmp_path, cifar10_tar, cache_dir):
    run_dir = run("configs/pretrain/simclr_cifar10.yaml", tmp_path, cifar10_tar, cache_dir, "data.subset=20",
                  "data.eval_subset=10", "trainer.max_epochs=2", "logger.log_every_n_steps=1",
                  "trainer.precision=bf16-mixed", "model.channels_last=true", "optim.implementation=foreach",
                  "data.num_workers=1", "data.persistent_workers=true", "data.pin_memory=true")
    losses = metrics(run_dir)["train/loss"]
    assert len(losses) == 2 * (200 // 64) and all(torch.isfinite(torch.tensor(losses)))
