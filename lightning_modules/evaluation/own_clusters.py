"""What protocol ``clustering`` needs beside the features: the checkpoint's own clusters (CoKe's
``clustering.label_memory`` or SeCu's ``label_memory``, one column per head) and the labels of the images they
assign, i.e. the pretraining train set, row for row (same subset, split and order)."""
from __future__ import annotations

from typing import Any


def pretrain_targets(source, cfg):
    """Labels of the pretraining train set, row for row with the label memory (same subset and split)."""
    import torch
    from omegaconf import OmegaConf

    from datamodules import PretrainDataModule
    from lightning_modules.evaluation.features import FeatureSet

    pretrain_data = source.pretrain_cfg.get("data") or {}
    data_cfg = OmegaConf.merge(cfg.data, {k: pretrain_data[k] for k in ("subset", "val_fraction", "seed") if k in pretrain_data})
    datamodule = PretrainDataModule(data_cfg, cfg.augment)
    datamodule.setup("fit")
    train = datamodule.train_set.data
    return FeatureSet(torch.zeros(len(train), 0), torch.from_numpy(train.fine), torch.from_numpy(train.coarse))


def checkpoint_clusters(source, cfg, labelled_beside: bool) -> dict[str, Any]:
    """EvalInputs' cluster fields. The targets are loaded only when the own clusters are scored: the checkpoint
    holds them, ``clustering.source`` is not ``kmeans``, and the images are the pretraining ones (the label memory
    is of those, not of ``data.labelled``'s)."""
    scored = source.cluster_labels is not None and cfg.clustering.source != "kmeans" and not labelled_beside
    return {"cluster_labels": source.cluster_labels, "clusters_per_head": source.clusters_per_head,
            "cluster_targets": pretrain_targets(source, cfg) if scored else None}
