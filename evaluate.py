"""Evaluate frozen features: ``python evaluate.py CHECKPOINT [key=value ...] [--config FILE] [--print-config]``.

CHECKPOINT is a Lightning checkpoint of this project, an exported backbone ``.safetensors``, or ``random``
(a randomly initialised backbone: the baseline row; set ``model.backbone`` etc.). Features are extracted once
and cached; then the protocols run (``protocol=linear,knn,retrieval,clustering`` or ``all``, plus ``sea``,
``fewshot`` and ``diagnostics`` when named) on the label levels (``levels=fine,coarse``). ``report.json`` and
``report.md`` (plus ``fewshot.png`` / ``map.png``) go to ``out_dir`` (default
``<checkpoint dir>/../eval/<checkpoint name>/``). ``export=backbone.safetensors`` writes a timm-loadable
backbone file (plus a sidecar .json) instead. See ``configs/eval_schema.py`` for every key.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from lightning_modules.run.cli_errors import DEBUG_FLAG, DEBUG_HELP, run_cli

DEFAULT_CONFIG = "configs/eval/default.yaml"
LIST_KEYS = ("protocol", "levels")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .ckpt, an exported .safetensors, or `random`")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. protocol=knn levels=fine data.eval_subset=100")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parent / DEFAULT_CONFIG), help="eval YAML")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    return parser.parse_intermixed_args(argv)


def list_overrides(overrides: list[str]) -> list[str]:
    """``protocol=knn`` and ``protocol=linear,knn`` mean the lists ``[knn]`` and ``[linear,knn]``."""
    out = []
    for item in overrides:
        key, _, value = item.partition("=")
        out.append(f"{key}=[{value}]" if key in LIST_KEYS and not value.startswith("[") else item)
    return out


def default_out_dir(source, cfg) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir)
    if source.kind == "random":
        return Path("runs") / "eval" / f"random-{cfg.model.backbone}-seed{cfg.seed}"
    path = Path(source.path)
    return path.parent.parent / "eval" / path.stem


def pick_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def load_eval_data(cfg):
    """(train, test) LabeledImages with data.subset / data.eval_subset applied, their row ids, the source path."""
    import numpy as np

    from datamodules import load_split
    from datamodules.datasets import per_class_rows
    from datamodules.discovery import locate_source

    train = load_split(cfg.data, "train")
    test = load_split(cfg.data, "test", train_classes=train.class_names)  # labels numbered as in train
    train_rows = per_class_rows(train.fine, cfg.data.subset, cfg.data.seed)
    test_rows = per_class_rows(test.fine, cfg.data.eval_subset, cfg.data.seed)
    return {"train": (train.take(train_rows), np.asarray(train_rows)), "test": (test.take(test_rows), np.asarray(test_rows))}, locate_source(cfg.data)


def split_features(split, images, rows, source_path, source, backbone, cfg, device):
    import torch

    from configs.loader import to_plain
    from datamodules import EvalTransform
    from datamodules.cache import source_fingerprint
    from lightning_modules.evaluation.features import FeatureSet, cached_features, extract_features, rows_digest

    data = to_plain(cfg.data)
    parts = {
        "weights": source.content_hash, "init_seed": cfg.seed if source.kind == "random" else None,
        "model": {k: to_plain(cfg.model)[k] for k in ("backbone", "cifar_stem", "kwargs")},
        "data": {"source": source_fingerprint(source_path), "split": split, "rows": rows_digest(torch.from_numpy(rows)),
                 **{k: data[k] for k in ("name", "hierarchy", "image_size", "skip_corrupt")}},
        "transform": {k: to_plain(cfg.augment)[k] for k in ("crop_size", "eval_resize", "mean", "std")},
    }

    def compute() -> FeatureSet:
        feats = extract_features(backbone, torch.from_numpy(images.images), EvalTransform(cfg.augment),
                                 cfg.data.eval_batch_size, device, cfg.model.channels_last, f"{split} features")
        return FeatureSet(feats, torch.from_numpy(images.fine), torch.from_numpy(images.coarse))

    return cached_features(cfg.data.cache_dir if cfg.feature_cache else None, parts, compute)


def coke_targets(source, cfg):
    """Labels of the pretraining train set, row for row with CoKe's label memory (same subset and split)."""
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from configs.loader import peek
    from configs.schema import default_cache_dir
    from lightning_modules.run.library_dirs import keep_library_caches_in

    overrides = list_overrides(args.overrides)
    keep_library_caches_in(peek(args.config, overrides, "data.cache_dir", default_cache_dir()))  # before imports
    from configs.eval_schema import eval_defaults, selected_levels
    from configs.loader import ConfigError, load_config, to_plain, to_yaml
    from datamodules import DataError
    from lightning_modules.evaluation.checkpoints import build_eval_backbone, describe_source, load_source
    from lightning_modules.evaluation.registry import selected_protocols
    from lightning_modules.evaluation.safe_load import UnsafeCheckpointError

    try:
        source = load_source(args.checkpoint)
        cfg = load_config(args.config, list_overrides(args.overrides), schema=eval_defaults(source.pretrain_cfg))
        protocols, levels = selected_protocols(cfg.protocol), selected_levels(cfg)
    except (ConfigError, UnsafeCheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    if cfg.export:
        from lightning_modules.evaluation.export import export_backbone

        path = export_backbone(source, cfg, cfg.export)
        print(f"backbone written to {path} (settings in {path.with_suffix('.json')})")
        return 0

    import torch

    from lightning_modules.evaluation.protocols import EvalInputs, run_protocols
    from lightning_modules.evaluation.report import build_report, log_to_wandb, write_report

    from datamodules.errors import NoLabelsError
    from datamodules.labelled import labelled_cfg, no_labels_message

    device = pick_device(cfg.device)
    start = time.perf_counter()
    try:
        beside = labelled_cfg(cfg.data)  # data.labelled: the labelled set beside the pretraining set
        if beside is not None:
            cfg.data = beside
        splits, source_path = load_eval_data(cfg)
    except NoLabelsError:
        print(f"data error: {no_labels_message(cfg.data, 'evaluate.py')}", file=sys.stderr)
        return 1
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 1
    backbone, feat_dim = build_eval_backbone(source, cfg.model, cfg.seed)
    features, cache = {}, {}
    for split, (images, rows) in splits.items():
        features[split], path, hit = split_features(split, images, rows, source_path, source, backbone, cfg, device)
        cache[split] = {"file": str(path) if path else None, "hit": hit}
    timings = {"features": time.perf_counter() - start}

    train_images = splits["train"][0]
    has_hierarchy = bool(train_images.superclass_names)
    if not has_hierarchy and "coarse" in levels:
        logging.getLogger("evaluate").warning("no superclass hierarchy for %s: coarse level skipped", cfg.data.name)
        levels = [level for level in levels if level != "coarse"]
    fine_to_coarse = torch.full((len(train_images.class_names),), -1, dtype=torch.int64)
    fine_to_coarse[torch.from_numpy(train_images.fine)] = torch.from_numpy(train_images.coarse)
    use_coke = "clustering" in protocols and source.cluster_labels is not None and cfg.clustering.source != "kmeans"
    use_coke = use_coke and beside is None  # CoKe's labels are of the pretraining images, not of data.labelled's
    inputs = EvalInputs(
        features["train"], features["test"], levels,
        {"fine": len(train_images.class_names), "coarse": len(train_images.superclass_names)},
        fine_to_coarse if has_hierarchy else None, source.cluster_labels,
        coke_targets(source, cfg) if use_coke else None, source.clusters_per_head,
    )
    results, protocol_timings, artifacts = run_protocols(protocols, inputs, cfg, device)

    data = to_plain(cfg.data)
    report = build_report(
        checkpoint=describe_source(source, cfg.model),
        data={"name": data["name"], "source": str(source_path), "val_fraction": data["val_fraction"], "seed": data["seed"],
              "splits": {s: {"images": len(splits[s][0]), "subset": data["subset" if s == "train" else "eval_subset"]} for s in splits},
              "num_fine": inputs.num_classes["fine"], "num_coarse": inputs.num_classes["coarse"],
              "class_names": train_images.class_names, "superclass_names": train_images.superclass_names,
              "fine_to_coarse": fine_to_coarse.tolist() if has_hierarchy else []},
        features={"dim": feat_dim, "transform": {k: to_plain(cfg.augment)[k] for k in ("crop_size", "eval_resize", "mean", "std")},
                  "cache": {s: c["file"] for s, c in cache.items()}, "cache_hit": {s: c["hit"] for s, c in cache.items()}},
        results=results, timings={**timings, **protocol_timings},
        command=" ".join(["evaluate.py", args.checkpoint, *args.overrides]),
    )
    out_dir = default_out_dir(source, cfg)
    json_path, md_path = write_report(report, out_dir, artifacts)
    log_to_wandb(report, cfg.logger, out_dir)
    print(md_path.read_text())
    print(f"report: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
