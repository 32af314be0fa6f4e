"""Per-method standings on the CPU: every shipped pretraining config family at its own settings, against random init
and against the same run at lr 0, at equal CPU time.

    python benchmarks/method_table.py [--minutes 1.0] [--seeds 0 1 2] [--rows coke-quick,coke-paper,...]
        [--subset 500] [--backbone test_resnet] [--out runs/method_table] [--eval-set key=value ...] [--threads 1]

Each row pretrains its shipped config (``configs/pretrain/<config>.yaml``) with its own method, views, batch size,
optimiser, lr, weight decay, temperatures and momenta. Only the model, the data and the length shrink:

- the backbone (timm's ``test_resnet``, 96-d features, by default) with its heads' hidden widths (512; the configs'
  2,048 and 4,096 are sized to a ResNet's features and would cost more than the backbone);
- the data: ``--subset`` images per class of CIFAR-10 (500: 5,000 images). Settings that count images or steps of
  the full 50,000-image set shrink with it by the same factor (``SCALED`` below): MoCo v2's and CoIns' queue,
  SwAV's and DeepCluster-v2's prototypes, CoKe's clusters (so the bound r·N/K keeps its number of images) and SwAV's
  frozen-prototype steps (two epochs). SeCu and quick.yaml need none: SeCu's 10–100 clusters are far below N and
  it counts its frozen phase and warm-up in images of the official epoch itself; quick.yaml is set for 5,000 images;
- the length: every row gets the same CPU time of its own process (``--minutes``, ``time.process_time``, one
  thread), and budget.py's clock fits the warm-up + cosine schedule to the epochs that fit (warm-up at most a tenth).

The lr-0 control is the same row at ``optim.lr=0`` for 2 epochs (tests/training_utils.py's LR0_CONTROL): its weights
stay at random init, but BatchNorm statistics adapt to the method's views, which alone gains points over random init.
Every checkpoint is scored by evaluate.py on frozen backbone features as budget.py scores (kNN-200 and the linear
probe, fine labels; bank and probe set ``data.subset`` per class of the training set, the full test set). A row
clears the bar when it beats its lr-0 control by >= 2 points on kNN-200 and on linear at every seed.

The table goes to stdout and <out>/method_table.md; every (row, seed) result to <out>/<row>-seed<S>/result.json, which
a rerun reuses (delete it to rerun that cell).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import budget  # noqa: E402  (benchmarks/budget.py: its clock, evaluate.py scoring and kNN-200 picking)
from benchmarks.run_options import split_overrides  # noqa: E402
from configs.loader import load_config, to_plain  # noqa: E402
from datamodules import PretrainDataModule  # noqa: E402
from lightning_modules.registry import method_class, method_schemas  # noqa: E402

FULL = 50_000  # CIFAR-10's training images, the size the shipped configs are set for
# row -> (config, what it uses)
ROWS = {
    "coke-quick": ("quick", "no labels"),
    "coke-paper": ("coke_cifar10_paper", "no labels"),
    "simclr": ("simclr_cifar10", "no labels"),
    "mocov2": ("mocov2_cifar10", "no labels"),
    "mocov3": ("mocov3_cifar10", "no labels"),
    "swav": ("swav_cifar10", "no labels"),
    "deepclusterv2": ("deepclusterv2_cifar10", "no labels"),
    "secu": ("secu_cifar10", "no labels"),
    "supervised-coarse": ("supervised_coarse_cifar10", "superclasses"),
    "supcon-coarse": ("supcon_coarse_cifar10", "superclasses"),
    "coins": ("coins_cifar10", "superclasses"),
    "coke-coarse": ("coke_coarse_cifar10", "superclasses"),
}
VARIANTS: dict[str, tuple[str, list[str]]] = {}  # --variant NAME=ROW:key=value,...: name -> (row, overrides)
BAR = 2.0  # points over the lr-0 control, on kNN-200 and on linear, at every seed
LR0_CONTROL = ("optim.lr=0.0",)  # for trainer.max_epochs=2, as tests/training_utils.py's LR0_CONTROL
CONTROL_EPOCHS = 2
EVAL = ["protocol=linear,knn", "levels=fine", "knn.ks=[200]", "linear.epochs=50", "linear.lrs=[0.1,0.3]",
        "linear.weight_decays=[0.0,1.0e-4]", "logger.kind=none", "feature_cache=false"]


def scaled(row: str, cfg, n: int) -> list[str]:
    """The row's settings that count images or steps of the full data set, shrunk to n images by the same factor."""
    f = n / FULL
    m = cfg.method
    if row in ("mocov2", "coins"):
        return [f"method.queue_size={max(cfg.data.batch_size, round(m.queue_size * f))}"]
    if row == "swav":
        full_epoch, epoch = FULL // cfg.data.batch_size, n // cfg.data.batch_size
        return [f"method.num_prototypes={round(m.num_prototypes * f)}",
                f"method.freeze_prototypes_iters={round(m.freeze_prototypes_iters * epoch / full_epoch)}"]
    if row == "deepclusterv2":
        return [f"method.num_prototypes=[{','.join(str(round(k * f)) for k in m.num_prototypes)}]"]
    if row in ("coke-paper", "coke-coarse"):
        return [f"method.num_clusters=[{','.join(str(round(k * f)) for k in m.num_clusters)}]"]
    return []


def shared(args) -> list[str]:
    return [f"model.backbone={args.backbone}", "model.cifar_stem=false", f"model.proj_hidden_dim={args.head_dim}",
            f"model.pred_hidden_dim={args.head_dim}", f"data.subset={args.subset}", "data.eval_subset=0",
            "data.num_workers=0", "data.pin_memory=false", "logger.kind=none", "trainer.precision=32"]


def row_overrides(row: str, args) -> list[str]:
    """The shared shrinking, the row's scaled settings, then a variant's own overrides (``--variant``)."""
    base, extra = VARIANTS.get(row, (row, []))
    config = REPO / "configs" / "pretrain" / f"{ROWS[row][0]}.yaml"
    cfg = load_config(config, shared(args), method_schemas())
    return [*shared(args), *scaled(base, cfg, 10 * int(args.subset)), *extra]


def pretrain(row: str, seed: int, args, out: Path, control: bool) -> dict:
    """Train one row (the CPU-time budget, or the lr-0 control's 2 epochs); save its checkpoint; return its timing."""
    config = REPO / "configs" / "pretrain" / f"{ROWS[row][0]}.yaml"
    extra = list(LR0_CONTROL) if control else []
    cfg = load_config(config, [*row_overrides(row, args), *extra, f"seed={seed}"], method_schemas())
    pl.seed_everything(seed)
    datamodule = PretrainDataModule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    model = method_class(cfg.method.name)(to_plain(cfg), asdict(datamodule.info))
    clock = None if control else budget.TrainingClock(args.minutes, datamodule, "32", cpu_time=True)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision="32", max_epochs=CONTROL_EPOCHS if control else 10**4, logger=False,
        callbacks=[clock] if clock else [], log_every_n_steps=cfg.logger.log_every_n_steps,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
    )
    started = time.process_time()
    trainer.fit(model, datamodule=datamodule)
    ckpt = out / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    seconds = clock.train_seconds() if clock else time.process_time() - started
    return {"ckpt": ckpt, "train_min": seconds / 60, "epochs": trainer.current_epoch, "steps": trainer.global_step,
            "batch": cfg.data.batch_size, "images_per_s": (clock.images if clock else 0) / max(seconds, 1e-9)}


def score(spec: str, out: Path, args, *extra: str) -> dict:
    """evaluate.py on frozen features: {"knn": kNN-200 fine, "linear": linear fine}, in %."""
    scoring = SimpleNamespace(device="cpu", eval_overrides=[f"data.subset={args.eval_subset}", *args.eval_overrides])
    saved, budget.EVAL = budget.EVAL, EVAL
    try:
        values = budget.score(spec, out, scoring, *extra)
    finally:
        budget.EVAL = saved
    return {"knn": budget.knn200(values, "fine"), "linear": values[("fine", "linear")]}


def cell(row: str, seed: int, args) -> dict:
    """One (row, seed): trained and lr-0 control, each scored; cached in <out>/<row>-seed<S>/result.json."""
    out = Path(args.out) / f"{row}-seed{seed}"
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    result = {"row": row, "seed": seed, "overrides": row_overrides(row, args)}
    for name, control in (("trained", False), ("lr0", True)):
        timing = pretrain(row, seed, args, out / name, control)
        result[name] = {**score(str(timing["ckpt"]), out / name, args),
                        **{k: v for k, v in timing.items() if k != "ckpt"}}
        timing["ckpt"].unlink()  # scored; a checkpoint per cell is not worth its disk
    done.write_text(json.dumps(result, indent=1))
    return result


def random_init(seed: int, args) -> dict:
    out = Path(args.out) / f"random-seed{seed}"
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    result = score("random", out, args, f"model.backbone={args.backbone}", "model.cifar_stem=false", f"seed={seed}")
    done.write_text(json.dumps(result, indent=1))
    return result


def random_bn(seed: int, args) -> dict:
    """The random-init backbone with its BatchNorm statistics re-estimated (a cumulative average, in train mode) on
    the pretraining subset's images through evaluate.py's transform: the cheap stand-in for an lr-0 control that
    RESULTS.md §1 compares with the lr-0 runs. Exported by evaluate.py, recalibrated here, scored by evaluate.py."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    import evaluate
    from datamodules import EvalTransform, load_split
    from datamodules.datasets import per_class_rows
    from lightning_modules.backbone import build_backbone
    from lightning_modules.checkpoints.sources import sidecar_path

    out = Path(args.out) / f"random-bn-seed{seed}"
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    plain = out / "random.safetensors"
    if evaluate.main(["random", f"model.backbone={args.backbone}", "model.cifar_stem=false", f"seed={seed}",
                      f"export={plain}", "logger.kind=none"]) != 0:
        raise RuntimeError("evaluate.py could not export the random-init backbone")
    from configs.eval_schema import EvalConfig

    cfg = load_config(REPO / "configs" / "eval" / "default.yaml", [f"data.subset={args.subset}"], schema=EvalConfig)
    backbone, _ = build_backbone(args.backbone, False)
    backbone.load_state_dict(load_file(plain))
    train = load_split(cfg.data, "train")
    images = torch.from_numpy(train.images[per_class_rows(train.fine, args.subset, cfg.data.seed)])
    for module in backbone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over every batch
    transform = EvalTransform(cfg.augment)
    backbone.train()
    with torch.no_grad():
        for start in range(0, len(images), 256):
            backbone(transform(images[start:start + 256]))
    with safe_open(str(plain), "pt") as f:
        metadata = f.metadata()
    recalibrated = out / "random-bn.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(recalibrated), metadata=metadata)
    shutil.copy(sidecar_path(plain), sidecar_path(recalibrated))
    result = score(str(recalibrated), out, args)
    done.write_text(json.dumps(result, indent=1))
    return result


def markdown(results: list[dict], randoms: dict[int, dict], seeds: list[int],
             bn_randoms: dict[int, dict] | None = None) -> str:
    bn_randoms = bn_randoms or {}
    def per_seed(rs, path, fmt="{:.1f}"):
        return ", ".join(fmt.format(path(r)) for r in rs)

    lines = ["| row | labels | epochs (steps) | kNN-200 trained | kNN-200 lr-0 | linear trained | linear lr-0 | "
             "gain over lr-0 kNN / linear | worst gain over lr-0 | gain over random (mean) | clears +2/+2 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows: dict[str, list[dict]] = {}
    for r in results:
        rows.setdefault(r["row"], []).append(r)
    for row, rs in rows.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        gains = [(r["trained"]["knn"] - r["lr0"]["knn"], r["trained"]["linear"] - r["lr0"]["linear"]) for r in rs]
        worst = (min(g[0] for g in gains), min(g[1] for g in gains))
        over_random = [(r["trained"]["knn"] - randoms[r["seed"]]["knn"], r["trained"]["linear"] - randoms[r["seed"]]["linear"])
                       for r in rs if r["seed"] in randoms]
        random_cell = (f"{statistics.mean(g[0] for g in over_random):+.1f} / {statistics.mean(g[1] for g in over_random):+.1f}"
                       if over_random else "–")
        clears = "yes" if min(worst) >= BAR and len(rs) >= 3 else ("no" if min(worst) < BAR else "too few seeds")
        lines.append(
            f"| {row} | {ROWS[row][1]} | {per_seed(rs, lambda r: r['trained']['epochs'], '{}')} "
            f"({per_seed(rs, lambda r: r['trained']['steps'], '{}')}) | "
            f"{per_seed(rs, lambda r: r['trained']['knn'])} | {per_seed(rs, lambda r: r['lr0']['knn'])} | "
            f"{per_seed(rs, lambda r: r['trained']['linear'])} | {per_seed(rs, lambda r: r['lr0']['linear'])} | "
            + ", ".join(f"{k:+.1f} / {l:+.1f}" for k, l in gains)
            + f" | {worst[0]:+.1f} / {worst[1]:+.1f} | {random_cell} | {clears} |")
    for name, refs in (("random init", randoms), ("random init, BatchNorm re-estimated", bn_randoms)):
        if not refs:
            continue
        knn = ", ".join(f"{refs[s]['knn']:.1f}" for s in seeds if s in refs)
        linear = ", ".join(f"{refs[s]['linear']:.1f}" for s in seeds if s in refs)
        lines.append(f"| {name} | – | – | {knn} | – | {linear} | – | – | – | – | – |")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=1.0, help="CPU minutes of training per row and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--subset", type=int, default=500, help="pretraining images per class")
    p.add_argument("--eval-subset", type=int, default=500, help="training images per class for the kNN bank and probe")
    p.add_argument("--backbone", default="test_resnet")
    p.add_argument("--head-dim", type=int, default=512, help="hidden width of the projection and prediction heads")
    p.add_argument("--out", default="runs/method_table")
    p.add_argument("--eval-set", nargs="*", default=[], dest="eval_overrides", help="key=value for evaluate.py")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variant", nargs="*", default=[], help="NAME=ROW:key=value,key=value: a row with overrides "
                   "after its scaled settings (a proposed fix; not a shipped setting)")
    p.add_argument("--bn-random", action="store_true", help="also score random init with BatchNorm statistics "
                   "re-estimated on the pretraining images (a candidate cheap lr-0 control)")
    args = p.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        base, _, extra = rest.partition(":")
        if not name or base not in ROWS:
            p.error(f"--variant {spec!r}: expected NAME=ROW:key=value,key=value with ROW one of {', '.join(ROWS)}")
        ROWS[name] = (ROWS[base][0], f"{ROWS[base][1]}, variant")
        VARIANTS[name] = (base, split_overrides(extra))
        args.rows.append(name)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    for row in args.rows:  # every row's config resolves before anything trains
        row_overrides(row, args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    randoms = {seed: random_init(seed, args) for seed in args.seeds}
    bn_randoms = {seed: random_bn(seed, args) for seed in args.seeds} if args.bn_random else {}
    results, failed = [], []
    for seed in args.seeds:  # seed-major: an interrupted run still has every row at its first seeds
        for row in args.rows:
            started = time.perf_counter()
            try:
                results.append(cell(row, seed, args))
            except Exception:  # one failed row must not lose the others
                traceback.print_exc()
                failed.append(f"{row} (seed {seed})")
                continue
            r = results[-1]
            print(f"{row} seed {seed}: trained {r['trained']['knn']:.1f} / {r['trained']['linear']:.1f} "
                  f"({r['trained']['epochs']} epochs), lr-0 {r['lr0']['knn']:.1f} / {r['lr0']['linear']:.1f} "
                  f"[{(time.perf_counter() - started) / 60:.1f} wall min]", flush=True)
    header = (f"{args.minutes} CPU-min of training per row and seed (one thread), {args.backbone} with "
              f"{args.head_dim}-d heads, {10 * args.subset} CIFAR-10 training images; lr-0 control: the same row at "
              f"optim.lr=0 for {CONTROL_EPOCHS} epochs; evaluate.py kNN-200 / linear (fine), bank and probe "
              f"{10 * args.eval_subset} training images, the full test set; seeds {args.seeds}")
    text = header + "\n\n" + markdown(results, randoms, args.seeds, bn_randoms)
    (Path(args.out) / "method_table.md").write_text(text + "\n")
    print("\n" + text)
    if failed:
        print(f"\n{len(failed)} cell(s) failed, tracebacks above: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
