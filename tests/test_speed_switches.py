"""The speed switches are config keys that run: bf16-mixed, channels_last, foreach/fused optimisers, persistent
workers and pinned memory (one tiny CPU fit), and a wrong optimiser backend is a clear error.
torch.compile (model.compile) is not tested here: compiling takes minutes on 2 CPU cores (see configs/launch/README.md)."""
import pytest
import torch
from omegaconf import OmegaConf

from lightning_modules.optim import build_optimizer
from lightning_modules.simclr import SimCLR
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
def test_bf16_channels_last_foreach_persistent_pinned_fit(tmp_path, cifar10_tar, cache_dir, monkeypatch):
    """Each switch observed inside the training step of a real fit: the autocast dtype, the backbone's conv weights
    in channels-last, the optimiser's foreach flag, the loader's persistent worker (the same process in both epochs);
    pinned memory is asked for and, with no GPU to copy to, left off (pinning only helps a copy to a GPU)."""
    seen = []
    original = SimCLR.training_loss

    def observing(self, batch, feats):
        loader = self.trainer.train_dataloader
        workers = getattr(getattr(loader, "_iterator", None), "_workers", None)
        conv = next(m for m in self.backbone.modules() if isinstance(m, torch.nn.Conv2d))
        seen.append({
            "epoch": self.current_epoch,
            "autocast": torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"),
            "feats": feats[0].dtype,
            "channels_last": conv.weight.is_contiguous(memory_format=torch.channels_last)
            and not conv.weight.is_contiguous(),
            "foreach": [group.get("foreach") for group in self.trainer.optimizers[0].param_groups],
            "loader": type(loader).__name__,
            "persistent": getattr(loader, "persistent_workers", None),
            "pin_memory": getattr(loader, "pin_memory", None),
            "workers": tuple(w.pid for w in workers) if workers else None,
        })
        return original(self, batch, feats)

    monkeypatch.setattr(SimCLR, "training_loss", observing)
    run_dir = run("configs/pretrain/simclr_cifar10.yaml", tmp_path, cifar10_tar, cache_dir, "data.subset=20",
                  "data.eval_subset=10", "trainer.max_epochs=2", "logger.log_every_n_steps=1",
                  "trainer.precision=bf16-mixed", "model.channels_last=true", "optim.implementation=foreach",
                  "data.loader=workers", "data.num_workers=1", "data.persistent_workers=true", "data.pin_memory=true")
    losses = metrics(run_dir)["train/loss"]
    assert len(losses) == 2 * (200 // 64) and all(torch.isfinite(torch.tensor(losses)))
    assert len(seen) == len(losses)
    problems = []
    for step in seen:
        if step["autocast"] != torch.bfloat16 or step["feats"] != torch.bfloat16:
            problems.append(f"bf16-mixed: autocast {step['autocast']}, backbone features {step['feats']}")
        if not step["channels_last"]:
            problems.append("model.channels_last: the first conv's weight is not channels-last")
        if step["foreach"] != [True] * len(step["foreach"]):
            problems.append(f"optim.implementation=foreach: param groups' foreach {step['foreach']}")
        if step["loader"] != "DataLoader" or step["persistent"] is not True or not step["workers"]:
            problems.append(f"data.persistent_workers: {step['loader']}, persistent {step['persistent']}, "
                            f"workers {step['workers']}")
        if step["pin_memory"] is not torch.cuda.is_available():
            problems.append(f"data.pin_memory: {step['pin_memory']} with CUDA available {torch.cuda.is_available()}")
    by_epoch = {step["epoch"]: step["workers"] for step in seen}
    if by_epoch.get(0) != by_epoch.get(1):
        problems.append(f"data.persistent_workers: worker processes {by_epoch} changed between epochs")
    assert not problems, "\n".join(dict.fromkeys(problems))
