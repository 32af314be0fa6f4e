"""evaluate.py: the linear probe, the report schema, and the feature cache (real CIFAR-10 subsets)."""
import json
import math
from pathlib import Path

import torch

import evaluate
from configs.eval_schema import EvalConfig
from configs.loader import load_config, to_plain
from lightning_modules.backbone import build_backbone
from lightning_modules.evaluation.features import FeatureSet
from lightning_modules.evaluation.linear_probe import run_linear, stratified_split

TINY_DATA = ["data.subset=20", "data.eval_subset=10", "data.num_workers=0", "logger.kind=none"]
FAST_PROBE = ["linear.epochs=5", "linear.lrs=[0.1]", "linear.weight_decays=[0.0,0.001]", "clustering.iterations=5"]
PROTOCOLS = {"offline-linear", "knn", "retrieval", "clustering"}
LEVELS = {"fine", "coarse", "fine-within-superclass"}


def write_checkpoint(path: Path, backbone: str = "test_resnet", cifar_stem: bool = False, seed: int = 0, epochs: int = 3) -> Path:
    """A checkpoint with the layout PretrainModule saves (state_dict with backbone.*, hyper_parameters.cfg)."""
    cfg = to_plain(load_config(None, [f"model.backbone={backbone}", f"model.cifar_stem={cifar_stem}", "method.name=simclr", "data.subset=100"]))
    torch.manual_seed(seed)
    model, _ = build_backbone(backbone, cifar_stem)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong load would show
        for name, buffer in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.uniform_(0.5, 1.5)
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    state["projection.0.weight"] = torch.randn(4, model.num_features)
    data_info = {"num_train": 10, "num_fine": 10, "num_coarse": 2}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "hyper_parameters": {"cfg": cfg, "data_info": data_info}, "epoch": epochs,
                "global_step": 10 * epochs}, path)
    return path


def run_eval(spec, tmp_path: Path, cifar10_tar: Path, cache_dir: Path, *overrides: str) -> dict:
    out = tmp_path / "eval"
    args = [str(spec), *TINY_DATA, f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", f"out_dir={out}", *overrides]
    assert evaluate.main(args) == 0
    return json.loads((out / "report.json").read_text())


def _blobs(n_per_class: int, generator: torch.Generator, means: torch.Tensor) -> FeatureSet:
    classes = means.shape[0]
    fine = torch.arange(classes).repeat_interleave(n_per_class)
    features = means[fine] + torch.randn(len(fine), means.shape[1], generator=generator)
    return FeatureSet(features, fine, fine // 3)


def test_probe_reaches_99_percent_on_linearly_separable_features():
    g = torch.Generator().manual_seed(0)
    means = 6 * torch.randn(9, 32, generator=g)  # well separated Gaussian blobs, 3 superclasses of 3
    train, test = _blobs(60, g, means), _blobs(30, g, means)
    cfg = load_config(None, ["linear.epochs=30", "linear.batch_size=128"], schema=EvalConfig).linear
    rows = run_linear(train, test, ["fine", "coarse"], {"fine": 9, "coarse": 3}, torch.arange(9) // 3, cfg, 0.2, accelerator="cpu")
    values = {(r["level"], r["metric"]): r["value"] for r in rows}
    assert values[("fine", "top1")] >= 0.99 and values[("coarse", "top1")] >= 0.99
    assert values[("fine-within-superclass", "top1")] >= 0.99
    assert values[("fine", "top5")] == 1.0 and ("coarse", "top5") not in values  # no top-5 of 3 classes


def test_validation_split_is_disjoint_and_stratified():
    labels = torch.arange(5).repeat_interleave(20)
    fit, val = stratified_split(labels, 0.1, seed=0)
    assert set(fit.tolist()).isdisjoint(val.tolist()) and len(fit) + len(val) == 100
    assert torch.bincount(labels[val]).tolist() == [2] * 5


def test_report_schema_is_complete_and_every_row_names_its_protocol(tmp_path, cifar10_tar, cache_dir):
    ckpt = write_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    report = run_eval(ckpt, tmp_path, cifar10_tar, cache_dir, "protocol=all", *FAST_PROBE)
    assert report["schema_version"] == 1
    assert {"created", "command", "checkpoint", "data", "features", "results", "timings_s"} <= report.keys()
    assert report["checkpoint"]["epochs"] == 3 and report["checkpoint"]["method"] == "simclr"
    assert report["checkpoint"]["backbone"] == "test_resnet" and report["checkpoint"]["kind"] == "lightning"
    assert report["data"]["splits"] == {"train": {"images": 200, "subset": 20.0}, "test": {"images": 100, "subset": 10.0}}
    assert report["data"]["fine_to_coarse"] == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    seen = set()
    for row in report["results"]:
        assert set(row) == {"protocol", "level", "metric", "value", "split", "params"}
        assert row["protocol"] in PROTOCOLS and row["level"] in LEVELS and math.isfinite(row["value"])
        seen.add((row["protocol"], row["level"], row["metric"], row["params"].get("k")))
    expected = {("offline-linear", "fine", "top1", None), ("offline-linear", "fine", "top5", None),
                ("offline-linear", "coarse", "top1", None), ("offline-linear", "fine-within-superclass", "top1", None),
                ("knn", "fine", "top1", 20), ("knn", "fine", "top1", 200), ("knn", "coarse", "top1", 200),
                ("retrieval", "fine", "recall@10", 10), ("clustering", "fine", "nmi", 10), ("clustering", "coarse", "acc", 2)}
    assert expected <= seen
    assert {r["params"]["temperature"] for r in report["results"] if r["protocol"] == "knn"} == {0.07}
    table = [line for line in (tmp_path / "eval" / "report.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert len(table) == len(report["results"])
    assert all(line.split(" | ")[0].lstrip("| ") in PROTOCOLS and line.rstrip(" |").endswith(" 3") for line in table)


def test_feature_cache_hit_when_unchanged_and_invalidated_when_checkpoint_or_transform_changes(tmp_path, cifar10_tar, cache_dir):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    quick = ["protocol=knn", "levels=fine", "knn.ks=[5]", f"data.cache_dir={tmp_path / 'cache'}"]

    def evaluate_once(*extra):
        report = run_eval(ckpt, tmp_path, cifar10_tar, cache_dir, *quick, *extra)
        return report["features"]["cache_hit"], report["features"]["cache"], report["results"][0]["value"]

    write_checkpoint(ckpt, seed=0)
    hit, files, value = evaluate_once()
    assert hit == {"train": False, "test": False} and all(Path(f).is_file() for f in files.values())
    hit, files_again, value_again = evaluate_once()
    assert hit == {"train": True, "test": True} and files_again == files and value_again == value
    write_checkpoint(ckpt, seed=1)  # same path, new weights
    hit, files_new, _ = evaluate_once()
    assert hit == {"train": False, "test": False} and set(files_new.values()).isdisjoint(files.values())
    hit, files_resized, _ = evaluate_once("augment.eval_resize=36")
    assert hit == {"train": False, "test": False} and set(files_resized.values()).isdisjoint(files_new.values())


def test_config_errors_exit_before_work(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "c.ckpt")
    assert evaluate.main([str(ckpt), "linear.lrr=1"]) == 2
    assert "linear.lrs" in capsys.readouterr().err
    assert evaluate.main([str(ckpt), "protocol=knn,linaer"]) == 2
    assert "unknown protocol" in capsys.readouterr().err
    assert evaluate.main([str(tmp_path / "missing.ckpt")]) == 2
    assert "missing.ckpt" in capsys.readouterr().err


def test_checkpoint_settings_are_inherited_and_overridable(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "c.ckpt", backbone="resnet10t")
    assert evaluate.main([str(ckpt), "--print-config", "data.eval_subset=7"]) == 0
    printed = capsys.readouterr().out
    assert "backbone: resnet10t" in printed and "eval_subset: 7.0" in printed and "\n  subset: 0.0" in printed

