"""Backbones from timm by name, with an optional CIFAR stem; the feature dimension is inferred."""
from __future__ import annotations

import timm
import torch
from torch import nn


def _cifar_stem(model: nn.Module, name: str) -> None:
    """3x3 stride-1 first conv and no max-pool, for 32-px inputs (ResNet family)."""
    if not (hasattr(model, "conv1") and hasattr(model, "maxpool")):
        raise ValueError(
            f"model.cifar_stem=true is supported for ResNet-style timm models, not `{name}`. "
            "Set model.cifar_stem=false and pass e.g. model.kwargs.img_size=32 model.kwargs.patch_size=4 for a ViT"
        )
    if isinstance(model.conv1, nn.Conv2d):
        out = model.conv1.out_channels
        model.conv1 = nn.Conv2d(3, out, kernel_size=3, stride=1, padding=1, bias=False)
    else:  # deep stem (resnet10t, resnet26d, ...): keep it, drop the first stride
        first = model.conv1[0]
        first.stride = (1, 1)
    model.maxpool = nn.Identity()


def build_backbone(name: str, cifar_stem: bool = False, **kwargs) -> tuple[nn.Module, int]:
    """A timm model without classifier (pooled features out) and its feature dimension."""
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            raise ValueError(f"unknown timm backbone `{name}` (model.backbone). Similar: {', '.join(close)}") from None
        raise
    if cifar_stem:
        _cifar_stem(model, name)
    return model, int(model.num_features)


def backbone_state_for_timm(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """State dict that ``timm.create_model(name, num_classes=0)`` (plus the same stem) loads directly."""
    return {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
