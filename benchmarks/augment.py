"""Views made on the device with Kornia against torchvision views made by CPU loader workers: images/s.

    python benchmarks/augment.py [--config configs/pretrain/coke_cifar10.yaml] [--device cuda|cpu]
        [--workers 0,2,4,8,16] [--batch-size 512] [--batches 20] [--warmup 3] [--num-images 8192]
        [--image-size 0] [--threads N] [--set key=value ...]

Both sides make the config's views (augment section: crops, flips, colour jitter, grayscale, blur, solarize,
multi-crop) from the real CIFAR-10 training images (uint8, upsampled once to --image-size when given, to mimic
ImageNet-size inputs), and both end with the float views on --device:
- kornia: the loader stacks uint8 images (ImageDataset, --kornia-workers), the batch is copied to the device and
  datamodules.augment.ViewAugmenter makes the views there (what training does);
- kornia, views only: the same without the loader and the copy (the batch already on the device);
- torchvision: per-image torchvision.transforms.v2 views in N loader workers, collated and copied to the device.
images/s counts images (not views), over --batches after --warmup, with a device sync before each clock read.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs.loader import load_config  # noqa: E402
from lightning_modules.registry import method_schemas  # noqa: E402
from datamodules import ImageDataset, LabeledImages, ViewAugmenter, load_split  # noqa: E402
from datamodules.augment import _blur_kernel  # noqa: E402
from datamodules.datasets import collate_batched  # noqa: E402


def tv_view(size: int, scale, jitter: float, blur_p: float, solarize_p: float, mean, std, grayscale_p: float = 0.2):
    """The torchvision twin of augment.view_pipeline (same parameters), ending normalised float."""
    steps = [
        v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4 * jitter, 0.4 * jitter, 0.2 * jitter, 0.1 * jitter)], p=0.8),
        v2.RandomGrayscale(p=grayscale_p),
    ]
    if blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(_blur_kernel(size), (0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def tv_views(cfg) -> list:
    """One transform per view, mirroring ViewAugmenter's choice of views for ``cfg.kind``."""
    large = (cfg.min_scale, cfg.max_scale)
    blur = 1.0 if cfg.gaussian_blur else 0.0
    j, m, s = cfg.color_jitter_strength, cfg.mean, cfg.std
    if cfg.kind == "byol":
        views = [tv_view(cfg.crop_size, large, j, blur, 0.0, m, s), tv_view(cfg.crop_size, large, j, 0.1 * blur, 0.2, m, s)]
    else:
        views = [tv_view(cfg.crop_size, large, j, 0.5 * blur, 0.0, m, s) for _ in range(2)]
    views = views[: cfg.num_large_crops]
    small = (cfg.small_min_scale, cfg.small_max_scale)
    views += [tv_view(cfg.small_crop_size, small, j, 0.5 * blur, 0.0, m, s) for _ in range(cfg.num_small_crops)]
    return views


class TorchvisionViews(Dataset):
    def __init__(self, images: torch.Tensor, views: list):
        self.images, self.views = images, views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = self.images[i]
        return tuple(view(image) for view in self.views)


def images_per_s(batches, step, batch_size: int, warmup: int, count: int, device: torch.device) -> float:
    """Run ``step`` on ``warmup + count`` items of ``batches``; images/s over the last ``count``."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        step(next(it))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count * batch_size / (time.perf_counter() - start)


def endless(loader):
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "pretrain" / "coke_cifar10.yaml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", default="0,2,4,8,16", help="torchvision loader worker counts to try")
    parser.add_argument("--kornia-workers", type=int, default=2, help="loader workers feeding uint8 batches to Kornia")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=8192)
    parser.add_argument("--image-size", type=int, default=0, help="upsample the CIFAR images to this size (0: 32)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads of the main process (0: default)")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value config overrides (augment.*)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args.config, args.set, method_schemas())
    data_cfg = load_config(None, ["data.name=cifar10"]).data  # the images: CIFAR-10 from data.root, decoded cache
    train = load_split(data_cfg, "train")
    images = torch.from_numpy(np.ascontiguousarray(train.images[: args.num_images]))
    if args.image_size and args.image_size != images.shape[-1]:
        images = v2.functional.resize(images, [args.image_size, args.image_size], antialias=True)
    n = len(images)
    labels = np.zeros(n, dtype=np.int64)
    dataset = ImageDataset(LabeledImages(images.numpy(), labels, labels, ["x"], []))
    pin = device.type == "cuda"
    results = []

    augment = ViewAugmenter(cfg.augment).to(device)
    on_device = images[: args.batch_size].to(device)
    rate = images_per_s(endless([on_device]), lambda x: augment(x), args.batch_size, args.warmup, args.batches, device)
    here = f"{args.device}, {torch.get_num_threads()} threads" if device.type == "cpu" else args.device
    results.append(("kornia, views only", here, rate))

    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=collate_batched,
                        num_workers=args.kornia_workers, pin_memory=pin, persistent_workers=args.kornia_workers > 0)
    rate = images_per_s(endless(loader), lambda b: augment(b["image"].to(device, non_blocking=True)), args.batch_size,
                        args.warmup, args.batches, device)
    results.append(("kornia (loader + copy + views)", f"{here}, {args.kornia_workers} loader workers", rate))

    views = tv_views(cfg.augment)
    for workers in [int(w) for w in args.workers.split(",") if w]:
        loader = DataLoader(TorchvisionViews(images, views), batch_size=args.batch_size, shuffle=True, drop_last=True,
                            num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
        rate = images_per_s(endless(loader), lambda b: [v.to(device, non_blocking=True) for v in b], args.batch_size,
                            args.warmup, args.batches, device)
        results.append(("torchvision v2 in loader workers", f"cpu, {workers} workers", rate))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    size = images.shape[-1]
    a = cfg.augment
    print(f"\n{Path(args.config).name} views ({a.kind}, {a.num_large_crops} x {a.crop_size}px"
          f"{f' + {a.num_small_crops} x {a.small_crop_size}px' if a.num_small_crops else ''}) from {size}px images, "
          f"batch {args.batch_size}, {args.batches} batches after {args.warmup} warm-up; {name}, "
          f"{torch.get_num_threads()} main-process threads\n")
    print("| pipeline | where | images/s |")
    print("|---|---|---:|")
    for pipeline, where, rate in results:
        print(f"| {pipeline} | {where} | {rate:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
