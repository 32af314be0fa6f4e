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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from configs.loader import peek
    from configs.schema import default_cache_dir
    from lightning_modules.run.library_dirs import keep_library_caches_in

    overrides = list_overrides(args.overrides)
    keep_library_caches_in(peek(args.config, overrides, "data.cache_dir", default_cache_dir()))  # before imports
    from configs.loader import to_yaml
    from datamodules import DataError
    from lightning_modules.evaluation.eval_data import load_eval_data
    from lightning_modules.evaluation.pipeline import REFUSALS, evaluate, pick_device, read_request, report_dir

    try:
        source, cfg, protocols, levels = read_request(args.checkpoint, args.config, overrides)
    except REFUSALS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    if cfg.export:
        from lightning_modules.checkpoints.export import export_backbone

        path = export_backbone(source, cfg, cfg.export)
        print(f"backbone written to {path} (settings in {path.with_suffix('.json')})")
        return 0

    from lightning_modules.evaluation.report import write_report
    from lightning_modules.run.report_wandb import log_to_wandb

    device = pick_device(cfg.device)
    try:
        data = load_eval_data(cfg)
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 1
    report, artifacts = evaluate(source, cfg, protocols, levels, data, device,
                                 command=" ".join(["evaluate.py", args.checkpoint, *args.overrides]))
    out_dir = report_dir(source, cfg)
    json_path, md_path = write_report(report, out_dir, artifacts)
    log_to_wandb(report, cfg.logger, out_dir)
    print(md_path.read_text())
    print(f"report: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
