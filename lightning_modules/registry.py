"""Method name -> LightningModule class. A new method is one file plus one line here."""
from __future__ import annotations

import importlib

METHODS = {
    "coke": "lightning_modules.coke:CoKe",
    "simclr": "lightning_modules.simclr:SimCLR",
    "mocov2": "lightning_modules.mocov2:MoCoV2",
    "mocov3": "lightning_modules.mocov3:MoCoV3",
    "swav": "lightning_modules.swav:SwAV",
    "deepclusterv2": "lightning_modules.deepclusterv2:DeepClusterV2",
    "supervised": "lightning_modules.supervised:Supervised",
    "supcon": "lightning_modules.supcon:SupCon",
    "coins": "lightning_modules.coins:CoIns",
    "secu": "lightning_modules.secu:SeCu",
}


def method_class(name: str):
    if name not in METHODS:
        raise KeyError(f"unknown method `{name}`; known: {', '.join(sorted(METHODS))}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def method_schemas() -> dict[str, type]:
    return {name: method_class(name).Config for name in METHODS}
