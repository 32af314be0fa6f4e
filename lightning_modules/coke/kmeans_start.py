"""How the clusters start (config section `method.kmeans_start`; ledger: "cluster_init=kmeans").

The paper starts with `init_epochs` full epochs at lr 0 that only run the online clustering. This instead makes
one no-grad pass over the training set, embeds every image as the clustering would see it, and runs spherical
k-means per head (ops/kmeans.py, as DeepCluster-v2 does at each epoch start). The result becomes the state an
initialisation epoch leaves: centres, every instance's previous-epoch label, zero duals. So with
`init_epochs=0` epoch 0 already trains, and the pass costs a forward without a graph instead of a training epoch.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
import torch.distributed as dist

from ops.coke_state import CokeState
from ops.distributed import gather_no_grad, is_distributed
from ops.kmeans import spherical_kmeans
from ops.precision import upcast

log = logging.getLogger(__name__)


@torch.no_grad()
def embed_training_set(batches: Iterable[dict],
                       embed: Callable[[dict], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (M,), unit-norm clustering inputs (M, D)) of every training batch of one pass, all ranks gathered."""
    ids, feats = [], []
    for batch in batches:
        ids.append(gather_no_grad(batch["index"]))
        feats.append(gather_no_grad(upcast(embed(batch))))
    return torch.cat(ids), torch.cat(feats)


@torch.no_grad()
def kmeans_initialise(state: CokeState, batches: Iterable[dict], embed: Callable[[dict], torch.Tensor],
                      iterations: int, seed: int) -> None:
    """Load spherical k-means clusters of the whole training set (`embed` of each batch) into `state`."""
    log.info("CoKe: k-means initialisation of the clusters (one no-grad pass over %d images)", state.num_instances)
    ids, feats = embed_training_set(batches, embed)
    device = state.centers.device
    ids = ids.to(device)
    embedded = torch.zeros(state.num_instances, feats.shape[1], dtype=feats.dtype, device=device)
    embedded[ids] = feats.to(device)  # a repeated id (sampler padding) carries the same image
    seen = torch.zeros(state.num_instances, dtype=torch.bool, device=device)
    seen[ids] = True
    labels = torch.full_like(state.label_memory, -1)
    centers = []
    for head, k in enumerate(state.num_clusters):
        generator = torch.Generator().manual_seed(seed * 1000 + head)
        head_centers, head_labels = spherical_kmeans(embedded[seen], k, iterations, generator=generator)
        centers.append(head_centers)
        labels[seen, head] = head_labels
    centers = torch.cat(centers)
    if is_distributed():  # scatter-add on a GPU does not sum in a fixed order: rank 0's clusters for all
        dist.broadcast(centers, src=0)
        dist.broadcast(labels, src=0)
    state.load_clusters(centers, labels)


class OnlineStart:
    """The paper: the `init_epochs` at lr 0 run the online clustering; nothing happens before training."""

    def __call__(self, state: CokeState, batches: Callable[[], Iterable[dict]],
                 embed: Callable[[dict], torch.Tensor]) -> None:
        pass


class KMeansStart:
    """kmeans_start.init=kmeans: before the first epoch of a fresh run (a resumed one has its clusters), spherical
    k-means of one no-grad pass over the training set, `iterations` per head. Changes vs the paper: no epoch at
    lr 0 is needed (with init_epochs=0 epoch 0 trains); ledger: "cluster_init=kmeans"."""

    def __init__(self, iterations: int, seed: int):
        self.iterations, self.seed = iterations, seed

    def __call__(self, state: CokeState, batches: Callable[[], Iterable[dict]],
                 embed: Callable[[dict], torch.Tensor]) -> None:
        if not bool((state.label_memory >= 0).any()):
            kmeans_initialise(state, batches(), embed, self.iterations, self.seed)
