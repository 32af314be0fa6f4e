"""After a NaN, last.ckpt holds the newest weights that are finite and gave a finite loss."""
import pytest
import torch

import train
from lightning_modules.base import NonFiniteLossError
from lightning_modules.run.last_good import DIVERGED_NAME, weights_are_finite
from lightning_modules.simclr import SimCLR
from tiny_data import run_dirs, tiny_tree, train_args

pytestmark = pytest.mark.usefixtures("one_thread")


def test_weights_diverged_in_the_last_step_of_an_epoch_are_not_kept(cifar10_tar, cache_dir, tmp_path, monkeypatch):
    """Epoch 1 ends with finite but exploded weights (x 1e29), epoch 2's first loss is NaN: the kept last.ckpt
    is epoch 0's, whose weights gave finite losses all through epoch 1."""
    tree = tiny_tree(cifar10_tar, cache_dir, tmp_path / "tree")
    original_loss, original_batch_end = SimCLR.training_loss, SimCLR.on_train_batch_end

    def explode_after_the_last_step_of_epoch_1(self, outputs, batch, batch_idx):
        original_batch_end(self, outputs, batch, batch_idx)
        if self.global_step == 4:
            with torch.no_grad():
                for p in self.backbone.parameters():
                    p.mul_(1e29)

    def nan_in_epoch_2(self, batch, feats):
        loss = original_loss(self, batch, feats)
        return loss * float("nan") if self.current_epoch == 2 else loss

    monkeypatch.setattr(SimCLR, "on_train_batch_end", explode_after_the_last_step_of_epoch_1)
    monkeypatch.setattr(SimCLR, "training_loss", nan_in_epoch_2)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        train.main(train_args(tree, tmp_path, "trainer.max_epochs=3"))
    checkpoints = run_dirs(tmp_path)[0] / "checkpoints"
    kept = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert kept["global_step"] == 2 and kept["epoch"] == 0
    weights = [v for v in kept["state_dict"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights) and max(v.abs().max() for v in weights) < 1e3
    assert torch.load(checkpoints / DIVERGED_NAME, weights_only=True)["global_step"] == 4  # kept aside, never resumed
    assert sorted(p.name for p in checkpoints.iterdir()) == [DIVERGED_NAME, "last.ckpt"]


def test_non_finite_weights_are_never_saved(cifar10_tar, cache_dir, tmp_path, monkeypatch):
    tree = tiny_tree(cifar10_tar, cache_dir, tmp_path / "tree")

    def poison_at_the_end_of_epoch_1(self):
        if self.current_epoch == 1:
            with torch.no_grad():
                next(self.backbone.parameters()).fill_(float("inf"))

    monkeypatch.setattr(SimCLR, "on_train_epoch_end", poison_at_the_end_of_epoch_1, raising=False)
    assert train.main(train_args(tree, tmp_path)) == 0
    kept = torch.load(run_dirs(tmp_path)[0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert kept["global_step"] == 2  # epoch 1's save was skipped: its weights were not finite
    assert [p.name for p in (run_dirs(tmp_path)[0] / "checkpoints").iterdir()] == ["last.ckpt"]
    layer = torch.nn.Linear(2, 2)
    assert weights_are_finite(layer)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    assert not weights_are_finite(layer)
