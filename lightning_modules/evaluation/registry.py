"""The evaluation protocols by name: what ``evaluate.py protocol=...`` runs, how each report row says how its number
was produced, and the name a benchmark reads it by. Adding a protocol is one entry here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from lightning_modules.evaluation.clustering import run_coke_assignments, run_kmeans
from lightning_modules.evaluation.diagnostics import run_diagnostics
from lightning_modules.evaluation.fewshot import run_fewshot
from lightning_modules.evaluation.knn import run_knn, run_retrieval
from lightning_modules.evaluation.linear_probe import run_linear
from lightning_modules.evaluation.own_clusters import checkpoint_clusters
from lightning_modules.evaluation.sea import run_sea

Run = Callable[[Any, Any, torch.device], tuple[list[dict], dict]]  # (inputs, cfg, device) -> (rows, figures)
# (source, cfg, labelled_beside) -> EvalInputs fields: what a protocol needs from the checkpoint beside the features
Inputs = Callable[[Any, Any, bool], dict[str, Any]]


@dataclass(frozen=True)
class Protocol:
    name: str  # evaluate.py's protocol=<name>
    row_name: str  # the "protocol" field of its rows in report.json
    description: str
    standard: bool  # part of protocol=all
    run: Run
    details: Callable[[dict], str]  # one line: exactly how a row's number was produced
    inputs: Optional[Inputs] = None  # a method-specific input, e.g. the checkpoint's own clusters


def _accelerator(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def _chosen(p: dict) -> str:
    return (f"chosen on {p['val_fraction']:g} of train, val top1 {100 * p['val_top1']:.2f}"
            if p.get("val_top1") is not None else "fixed, no search")


def _linear(inputs, cfg, device):
    return run_linear(inputs.train, inputs.test, inputs.levels, inputs.num_classes, inputs.fine_to_coarse, cfg.linear,
                      cfg.data.val_fraction, cfg.seed, _accelerator(device)), {}


def _knn(inputs, cfg, device):
    return run_knn(inputs.train, inputs.test, inputs.levels, inputs.num_classes, inputs.fine_to_coarse, cfg.knn,
                   device), {}


def _split(inputs, split: str, key: str):
    splits = {"train": inputs.train, "test": inputs.test}
    if split not in splits:
        raise ValueError(f"unknown {key} `{split}`; use train or test")
    return splits[split]


def _retrieval(inputs, cfg, device):
    split = cfg.retrieval.split
    return run_retrieval(_split(inputs, split, "retrieval.split"), split, inputs.levels, cfg.retrieval, device), {}


def _clustering(inputs, cfg, device):
    source = cfg.clustering.source
    if source not in ("auto", "kmeans", "coke"):
        raise ValueError(f"unknown clustering.source `{source}`; use auto, kmeans or coke")
    rows = []
    if source in ("auto", "coke") and inputs.cluster_labels is not None:
        rows += run_coke_assignments(inputs.cluster_labels, inputs.cluster_targets, inputs.levels,
                                     inputs.clusters_per_head)
    elif source == "coke":
        raise ValueError("clustering.source=coke, but the checkpoint holds no label memory of its own clusters "
                         "(CoKe's clustering.label_memory or SeCu's label_memory)")
    if source in ("auto", "kmeans"):
        split = cfg.clustering.split
        rows += run_kmeans(_split(inputs, split, "clustering.split"), split, inputs.levels, inputs.num_classes,
                           cfg.clustering, cfg.seed, device)
    return rows, {}


def _sea(inputs, cfg, device):
    return run_sea(inputs.train, inputs.test, inputs.levels, inputs.num_classes, inputs.fine_to_coarse, cfg.sea,
                   cfg.data.val_fraction, cfg.seed, _accelerator(device)), {}


def _fewshot(inputs, cfg, device):
    return run_fewshot(inputs.train, inputs.test, inputs.levels, inputs.num_classes, cfg.fewshot,
                       _accelerator(device)), {}


def _diagnostics(inputs, cfg, device):
    split = cfg.diagnostics.split
    return run_diagnostics(_split(inputs, split, "diagnostics.split"), split, inputs.levels, inputs.fine_to_coarse,
                           inputs.num_classes["fine"], cfg.diagnostics, cfg.seed)


def _linear_details(p: dict) -> str:
    return (f"frozen features, {p['optimizer']} {p['epochs']} epochs, lr {p['lr']:g}, wd {p['weight_decay']:g} "
            f"({_chosen(p)})")


def _sea_details(p: dict) -> str:
    return (f"SeA: L2-normalised frozen features + semantic adversarial step eta {p['eta']:g} (alpha {p['alpha']:g}), "
            f"T {p['temperature']:g}, sgd {p['epochs']} epochs, lr {p['lr']:g}, wd {p['weight_decay']:g} "
            f"({_chosen(p)})")


def _fewshot_details(p: dict) -> str:
    return (f"{p['shots']} labelled per class ({p['train_images']} images), linear probe lr {p['lr']:g} "
            f"wd {p['weight_decay']:g} {p['epochs']} epochs; mean ± {100 * p['std']:.2f} over {len(p['seeds'])} seeds")


def _clustering_details(p: dict) -> str:
    if p["source"] == "coke":
        return f"the checkpoint's own assignments, head {p['head']} (K={p['k']})"
    return f"k-means (spherical, k={p['k']}, {p['iterations']} iterations, {p['init']} init)"


def _diagnostics_details(row: dict) -> str:
    p = row["params"]
    extra = {"uniformity": f", t={p.get('t')}", "alignment": ", positives: same label",
             "collapse_ratio": f", within {p.get('within', 0):.3f} / across {p.get('across', 0):.3f}"}
    return f"{row['metric']} of {p['images']} frozen features ({p['dim']}-d){extra.get(row['metric'], '')}"


def _params(details: Callable[[dict], str]) -> Callable[[dict], str]:
    return lambda row: details(row["params"])


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("linear", "offline-linear", "a linear probe on frozen features (lr and wd chosen on a train split)",
             True, _linear, _params(_linear_details)),
    Protocol("knn", "knn", "weighted cosine kNN of the test features against the train features", True, _knn,
             _params(lambda p: f"k={p['k']}, {p['similarity']}, weights exp(sim/T) T={p['temperature']:g}, "
                               f"bank: {p['bank']}")),
    Protocol("retrieval", "retrieval", "leave-one-out Recall@k", True, _retrieval,
             _params(lambda p: f"Recall@{p['k']}, {p['similarity']}, leave-one-out")),
    Protocol("clustering", "clustering", "NMI/ARI/ACC of k-means, and of the checkpoint's own clusters", True,
             _clustering, _params(_clustering_details), checkpoint_clusters),
    Protocol("sea", "sea", "the linear probe on semantically adversarial features (SeA)", False, _sea,
             _params(_sea_details)),
    Protocol("fewshot", "fewshot", "linear probes on n labelled images per class, several seeds", False, _fewshot,
             _params(_fewshot_details)),
    Protocol("diagnostics", "diagnostics", "uniformity, alignment, collapse and a feature map", False, _diagnostics,
             _diagnostics_details),
)}
BY_ROW_NAME = {p.row_name: p for p in PROTOCOLS.values()}


def selected_protocols(names: list[str]) -> list[str]:
    """The protocols to run, in a fixed order; ``all`` means the standard ones, the others may be added by name."""
    names = [str(n) for n in names]
    unknown = [n for n in names if n not in PROTOCOLS and n != "all"]
    if unknown:
        standard = ", ".join(n for n, p in PROTOCOLS.items() if p.standard)
        raise ValueError(f"unknown protocol {unknown}; choose from {', '.join(PROTOCOLS)} or all "
                         f"(= {standard}; a list is fine)")
    wanted = set(names) | ({n for n, p in PROTOCOLS.items() if p.standard} if "all" in names else set())
    return [n for n in PROTOCOLS if n in wanted]
