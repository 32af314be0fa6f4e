"""Views made on the device with Kornia: per-sample random, reproducible under ``torch.manual_seed``.

Input: a uint8 batch (B, 3, H, W) on any device. Output: a list of normalised float views.
"""
from __future__ import annotations

from typing import Sequence

import kornia.augmentation as K
import torch
from torch import nn


def _blur_kernel(size: int, kernel: int = 0) -> int:
    """``kernel`` (odd), else about a tenth of the crop, as in SimCLR/BYOL."""
    k = kernel or max(3, int(0.1 * size))
    return k if k % 2 else k + 1


def view_pipeline(
    size: int, scale: tuple[float, float], jitter: float, blur_p: float, solarize_p: float, grayscale_p: float = 0.2,
    blur_kernel: int = 0,
) -> nn.Sequential:
    steps = [
        K.RandomResizedCrop((size, size), scale=scale, cropping_mode="resample"),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4 * jitter, 0.4 * jitter, 0.2 * jitter, 0.1 * jitter, p=0.8),
        K.RandomGrayscale(p=grayscale_p),
    ]
    if blur_p > 0:
        steps.append(K.RandomGaussianBlur(_blur_kernel(size, blur_kernel), (0.1, 2.0), p=blur_p))
    if solarize_p > 0:
        steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))  # threshold 0.5
    return nn.Sequential(*steps)


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


class ViewAugmenter(nn.Module):
    """``kind``: simclr (two symmetric views), byol (asymmetric blur/solarize), multicrop (2 large + n small)."""

    def __init__(self, cfg):
        super().__init__()
        self.kind = cfg.kind
        large_scale = (cfg.min_scale, cfg.max_scale)
        blur = 1.0 if cfg.gaussian_blur else 0.0
        jitter = cfg.color_jitter_strength
        kernel = cfg.blur_kernel_size
        size = cfg.view_size or cfg.crop_size
        if cfg.kind == "byol":
            pipes = [
                view_pipeline(size, large_scale, jitter, blur_p=1.0 * blur, solarize_p=0.0, blur_kernel=kernel),
                view_pipeline(size, large_scale, jitter, blur_p=0.1 * blur, solarize_p=0.2, blur_kernel=kernel),
            ]
        elif cfg.kind in ("simclr", "multicrop"):
            pipes = [view_pipeline(size, large_scale, jitter, blur_p=0.5 * blur, solarize_p=0.0, blur_kernel=kernel)
                     for _ in range(2)]
        else:
            raise ValueError(f"unknown augment.kind `{cfg.kind}`; use simclr, byol or multicrop")
        if not 1 <= cfg.num_large_crops <= 2:
            raise ValueError(f"augment.num_large_crops must be 1 or 2, got {cfg.num_large_crops}")
        pipes = pipes[: cfg.num_large_crops]
        if cfg.kind == "multicrop" or cfg.num_small_crops:
            small = view_pipeline(cfg.small_crop_size, (cfg.small_min_scale, cfg.small_max_scale), jitter, 0.5 * blur, 0.0)
            pipes += [small] * cfg.num_small_crops
        self.pipes = nn.ModuleList(pipes)
        self.num_large = cfg.num_large_crops
        self.normalize = Normalize(cfg.mean, cfg.std)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = to_unit_float(images)
        return [self.normalize(pipe(x).clamp_(0, 1)) for pipe in self.pipes]


class EvalTransform(nn.Module):
    """Resize the shorter side, centre-crop, normalise: deterministic."""

    def __init__(self, cfg):
        super().__init__()
        self.resize, self.crop = cfg.eval_resize, cfg.crop_size
        self.normalize = Normalize(cfg.mean, cfg.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        x = to_unit_float(images)
        if x.shape[-1] != self.resize or x.shape[-2] != self.resize:
            x = TF.resize(x, self.resize, antialias=True)
        if x.shape[-1] != self.crop or x.shape[-2] != self.crop:
            x = TF.center_crop(x, [self.crop, self.crop])
        return self.normalize(x)


def denormalize(view: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=view.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=view.device).view(1, -1, 1, 1)
    return (view * s + m).clamp(0, 1)
