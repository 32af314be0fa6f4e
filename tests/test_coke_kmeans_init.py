"""CoKe's k-means initialisation (method.kmeans_start.init=kmeans): the state it loads, that epoch 0 then trains against
those clusters, and that a resumed run keeps its own clusters."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

import lightning_modules.coke.kmeans_start as coke_module
from ops.coke_state import CokeState
from ops.kmeans import spherical_kmeans
from training_utils import make_trainer, run

KMEANS = ["augment.clean_view=true", "method.clean_view.assign_on=clean", "method.kmeans_start.init=kmeans", "method.init_epochs=0"]


def test_loaded_clusters_are_the_next_steps_previous_labels_and_loss_centres():
    state = CokeState(6, [2, 3], 4, ratio=0.4, dual_lr=20.0, seed=0)
    state.step(F.normalize(torch.randn(6, 4), dim=1), torch.arange(6))  # duals and counters away from zero
    centers = torch.randn(5, 4)
    labels = torch.tensor([[0, 2], [1, 0], [1, 1], [0, 2], [-1, -1], [1, 0]])
    state.load_clusters(centers, labels)
    torch.testing.assert_close(state.loss_centers(), F.normalize(centers, dim=1))
    assert (state.duals == 0).all() and (state.counters == 0).all()
    previous = state.step(F.normalize(torch.randn(3, 4), dim=1), torch.tensor([4, 0, 2]))
    assert previous.tolist() == [[-1, -1], [0, 2], [1, 1]]
    with pytest.raises(ValueError, match="need centres"):
        state.load_clusters(centers[:4], labels)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_kmeans_init_clusters_the_clean_images_and_epoch_zero_trains_on_them(cifar10_tar, cache_dir):
    from test_coke_module import ONE_VIEW, STEPS, build

    model, datamodule = build(ONE_VIEW, cifar10_tar, cache_dir, *KMEANS)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    embedded: dict[int, torch.Tensor] = {}
    no_grad_input = model.assign_encoder.no_grad_input

    def spy(module, batch):
        x = no_grad_input(module, batch)
        embedded.update(zip(batch["index"].tolist(), x))
        return x

    model.assign_encoder.no_grad_input = spy
    record = {}

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 0:
                record["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
                record["memory"] = pl_module.clustering.label_memory.clone()
                record["centers"] = pl_module.clustering.prev_centers.clone()

    trainer = make_trainer(1, Watch(), limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)

    ids = torch.tensor(sorted(embedded))
    assert len(ids) == STEPS * 64  # one pass over the training batches (the last, partial one is dropped)
    features = torch.stack([embedded[i] for i in ids.tolist()])
    torch.testing.assert_close(features.norm(dim=1), torch.ones(len(ids)))
    memory, centers = record["memory"], record["centers"]
    for head, head_centers in enumerate(model.clustering.split_heads(centers)):
        expected_centers, expected_labels = spherical_kmeans(
            features, head_centers.shape[0], 10, generator=torch.Generator().manual_seed(model.cfg.seed * 1000 + head))
        torch.testing.assert_close(head_centers, expected_centers)
        assert torch.equal(memory[ids, head], expected_labels)
        assert torch.equal(expected_labels, (features @ head_centers.T).argmax(1))  # every label its nearest centre
    assert (memory[ids] >= 0).all() and (memory.sum(1) < 0).sum() == len(memory) - len(ids)
    assert record["lr"] > 0  # no epoch at lr 0: epoch 0 already trains
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.backbone.named_parameters())


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_resumed_run_keeps_its_clusters(tmp_path, cifar10_tar, cache_dir, monkeypatch):
    from test_coke_module import ONE_VIEW, SMALL

    calls = []
    original = coke_module.kmeans_initialise
    monkeypatch.setattr(coke_module, "kmeans_initialise", lambda *a: (calls.append(1), original(*a)))
    first = run(ONE_VIEW, tmp_path, cifar10_tar, cache_dir, *SMALL, *KMEANS, "trainer.max_epochs=1")
    assert calls == [1]
    run(ONE_VIEW, tmp_path, cifar10_tar, cache_dir, *SMALL, *KMEANS, "trainer.max_epochs=2",
        f"resume={first / 'checkpoints' / 'last.ckpt'}")
    assert calls == [1]


def test_kmeans_start_init_must_be_online_or_kmeans(cifar10_tar, cache_dir):
    from test_coke_module import ONE_VIEW, build

    with pytest.raises(ValueError, match=r"method\.kmeans_start\.init.*expected one of \[online, kmeans\]"):
        build(ONE_VIEW, cifar10_tar, cache_dir, "method.kmeans_start.init=kmeanz")
