"""Where a CoKe run's label churn comes from: a table per clustering head, from one checkpoint.

    python benchmarks/coke_churn.py RUN_DIR/checkpoints/last.ckpt [--images 2000] [--seed 0] [--threads 1]

On a sample of the run's own training images it assigns, with the checkpoint's centres (the ones its loss uses)
and duals, two independent augmentations, the un-augmented image, and the same without the duals, and compares:

- aug vs aug:   two augmentations of one image land in different clusters (the augmentation's share of the churn);
- clean vs aug: the un-augmented image against one augmentation;
- stored vs aug: the label the run stored for the image (its previous-epoch target) against a fresh augmentation;
- margin:       the median gap between an image's best and second-best centre similarity, beside the duals' mean
                and maximum (a dual larger than the margin decides the assignment rather than the feature);
- NMI:          of the un-augmented images' clusters against the fine labels, and the clusters those images use.

The run's config (``config.yaml`` in its run directory) supplies the data, augmentation and model.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs.loader import load_config, to_plain  # noqa: E402
from datamodules import PretrainDataModule  # noqa: E402
from lightning_modules.registry import method_class, method_schemas  # noqa: E402
from torchmetrics.functional.clustering import normalized_mutual_info_score  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--images", type=int, default=2000, help="training images sampled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


def load_run(checkpoint: Path, images: int):
    config = checkpoint.parent.parent / "config.yaml"
    if not config.is_file():
        sys.exit(f"coke_churn: no config.yaml in {config.parent}: give the last.ckpt of a train.py run directory")
    cfg = load_config(str(config), ["data.num_workers=0", f"data.batch_size={images}"], method_schemas())
    if cfg.method.name != "coke":
        sys.exit(f"coke_churn: {checkpoint} is a {cfg.method.name} run, not a CoKe run")
    datamodule = PretrainDataModule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    model = method_class("coke")(to_plain(cfg), asdict(datamodule.info))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state, strict=False)  # the NMI dashboard's buffer is not saved
    return model.eval(), datamodule


@torch.no_grad()
def churn_table(model, datamodule, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())))
    project = lambda x: F.normalize(model.projection(model(x)), dim=1)  # noqa: E731
    clean = project(datamodule.eval_transform(batch["image"]))
    first, second = (project(datamodule.augment(batch["image"])[0]) for _ in range(2))
    state = model.clustering
    stored = state.label_memory[batch["index"]]
    rows = []
    heads = zip(state.split_heads(state.loss_centers()), state.split_heads(state.duals))
    for head, (centers, duals) in enumerate(heads):
        top2 = (clean @ centers.T).topk(2, dim=1).values
        for with_duals in (True, False):
            shift = duals if with_duals else torch.zeros_like(duals)
            assign = lambda x: (x @ centers.T + shift).argmax(1)  # noqa: E731
            a, b, c = assign(first), assign(second), assign(clean)
            rows.append({
                "head": head, "K": centers.shape[0], "duals": "with" if with_duals else "without",
                "aug vs aug": (a != b).float().mean().item(), "clean vs aug": (c != a).float().mean().item(),
                "stored vs aug": (stored[:, head] != a).float().mean().item(),
                "margin": (top2[:, 0] - top2[:, 1]).median().item(), "dual mean": duals.mean().item(),
                "dual max": duals.max().item(), "NMI clean/fine": float(normalized_mutual_info_score(c, batch["fine"])),
                "clusters used": int(c.unique().numel()),
            })
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, datamodule = load_run(args.checkpoint, args.images)
    rows = churn_table(model, datamodule, args.seed)
    columns = list(rows[0])
    print(f"{args.checkpoint} ({args.images} training images, seed {args.seed}); fractions of images whose labels differ")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * 3 + "---:|" * (len(columns) - 3))
    for row in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
