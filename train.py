"""Pretrain a backbone: ``python train.py [CONFIG.yaml] [key=value ...] [--print-config]``.

Without a config it runs the default experiment. See README.md for the configs and options.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from lightning_modules.run.cli_errors import DEBUG_FLAG, DEBUG_HELP, run_cli

DEFAULT_CONFIG = "configs/pretrain/coke_cifar10.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.5 trainer.devices=4")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    if args.config and "=" in args.config:  # only overrides were given
        args.overrides.insert(0, args.config)
        args.config = None
    args.config = args.config or str(Path(__file__).resolve().parent / DEFAULT_CONFIG)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from configs.loader import ConfigError, load_config, peek, to_plain, to_yaml
    from configs.schema import default_cache_dir
    from lightning_modules.run.library_dirs import keep_library_caches_in

    keep_library_caches_in(peek(args.config, args.overrides, "data.cache_dir", default_cache_dir()))  # before imports
    from lightning_modules.run import fit_outcome
    from lightning_modules.registry import method_class, method_schemas
    from lightning_modules.run.loggers import check_logger
    from lightning_modules.run.resume import resolve_resume, resume_command
    from lightning_modules.run.resume_match import check_fits, check_same_model
    from lightning_modules.run.runs import build_trainer, check_trainer_keys, prepare_run_dir
    from lightning_modules.run.warm_start import apply_warm_start, load_warm_start

    try:
        cfg = load_config(args.config, args.overrides, method_schemas())
        check_trainer_keys(cfg.trainer)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    run_name = cfg.run_name or Path(args.config).stem
    resume = resolve_resume(cfg, run_name)  # before any work: a bad checkpoint or logger ends here (run_cli)
    if resume:
        check_same_model(resume, to_plain(cfg), args.config)
    warm_start = load_warm_start(cfg)
    check_logger(cfg.logger)

    import pytorch_lightning as pl

    from datamodules import DataError, PretrainDataModule

    pl.seed_everything(cfg.seed, workers=True)
    datamodule = PretrainDataModule(cfg.data, cfg.augment)
    try:
        datamodule.setup("fit")
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 1
    from lightning_modules.run.label_use import unlabelled_refusal

    refusal = unlabelled_refusal(cfg.method, cfg.data) if not datamodule.info.num_fine else ""
    refusal = refusal or datamodule.fewer_than_a_batch()
    if refusal:
        print(f"data error: {refusal}", file=sys.stderr)
        return 1
    try:
        model = method_class(cfg.method.name)(to_plain(cfg), asdict(datamodule.info))
    except ValueError as err:  # a method refusing a combination of settings, e.g. method.assign_on=clean alone
        raise ConfigError(str(err)) from err
    if resume:
        check_fits(resume, model, to_plain(cfg), args.config)
    if warm_start:
        apply_warm_start(model, warm_start, cfg.model)
    run_dir = prepare_run_dir(cfg, run_name, resume)
    trainer = build_trainer(cfg, run_dir, run_name, resume.global_step if resume else None)
    from lightning_modules.evaluation.knn_monitor import knn_monitor

    if monitor := knn_monitor(datamodule, cfg.augment):  # data.labelled: the online probe of unlabelled images
        trainer.callbacks.append(monitor)
    status = fit_outcome.fit(trainer, model, datamodule, resume.checkpoint if resume else None, run_dir,
                             resume_command(args.config, args.overrides, run_dir))
    if status:
        return status
    if trainer.global_rank == 0:
        print(f"run directory: {run_dir}\ncheckpoint: {run_dir / 'checkpoints' / 'last.ckpt'}")
        print(f"evaluate with: python evaluate.py {run_dir / 'checkpoints' / 'last.ckpt'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
