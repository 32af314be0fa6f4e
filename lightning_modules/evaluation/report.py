"""``report.json`` and ``report.md``: every number with its protocol, parameters, label level and data.

report.json, schema_version 1::

    {
      "schema_version": 1,
      "created": "2026-11-24T20:15:00+00:00",
      "command": "evaluate.py runs/.../last.ckpt protocol=all",
      "checkpoint": {"path", "kind": "lightning"|"safetensors"|"random", "sha256", "method", "epochs" (completed
                     pretraining epochs), "global_step", "planned_epochs", "backbone", "cifar_stem",
                     "backbone_kwargs", "pretrain_data": {"name", "subset"}, "has_cluster_labels"},
      "data": {"name", "source", "splits": {"train": {"images", "subset"}, "test": {"images", "subset"}},
               "val_fraction", "seed", "num_fine", "num_coarse", "class_names", "superclass_names", "fine_to_coarse"},
      "features": {"dim", "transform": {"crop_size", "eval_resize", "mean", "std"}, "cache": {split: file|null},
                   "cache_hit": {split: bool}},
      "results": [
        {"protocol": "offline-linear"|"knn"|"retrieval"|"clustering"|"sea"|"fewshot"|"diagnostics",
         "level": "fine"|"coarse"|"fine-within-superclass"|"none" (label-free diagnostics),
         "metric": "top1"|"top5"|"recall@K"|"nmi"|"ari"|"acc", or for diagnostics (RAW_METRICS, not fractions)
                   "rankme"|"rank_fraction"|"uniformity"|"alignment"|"collapse_ratio",
         "value": float in [0, 1] (ARI may be negative); diagnostics: the raw number,
         "split": the split the number is measured on ("test", or "train" for clustering),
         "params": {protocol settings: linear: optimizer, epochs, lr, weight_decay, batch_size, val_fraction,
                    val_top1, train_images; knn: k, temperature, similarity, bank, bank_images;
                    retrieval: k, similarity, leave_one_out; clustering: source ("kmeans"|"coke"), k, iterations,
                    init, head; sea: as linear plus eta, alpha, temperature; fewshot: shots (int or "all"),
                    seeds, per_seed, std, train_images, classes, lr, weight_decay, epochs (value = mean over seeds);
                    diagnostics: images, dim, and per metric t / positives / within, across}},
        ...],
      "figures": {"fewshot": "fewshot.png", "map": "map.png"} (files beside report.json; those drawn),
      "timings_s": {"features": s, "linear": s, "knn": s, "retrieval": s, "clustering": s, "sea": s, ...}
    }

Added later (still schema 1, every addition optional): protocols sea, fewshot and diagnostics, level "none",
the diagnostics metrics and the "figures" key.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from lightning_modules.checkpoints.sources import RANDOM, EvalSource
from lightning_modules.evaluation.registry import BY_ROW_NAME

SCHEMA_VERSION = 1
TABLE_COLUMNS = ["protocol", "protocol details", "level", "metric", "value", "eval data", "checkpoint epochs"]
RAW_METRICS = ("rankme", "rank_fraction", "uniformity", "alignment", "collapse_ratio")  # shown as is, not as %


def protocol_details(row: dict) -> str:
    """One line that says exactly how the number was produced."""
    return BY_ROW_NAME[row["protocol"]].details(row)


def describe_source(source: EvalSource, model_cfg: Any) -> dict:
    """The ``checkpoint`` block of the report."""
    trainer = source.pretrain_cfg.get("trainer") or {}
    return {
        "path": source.path, "kind": source.kind, "sha256": source.content_hash if source.kind != RANDOM else None,
        "method": source.method or None, "epochs": source.epochs, "global_step": source.global_step,
        "planned_epochs": trainer.get("max_epochs"), "backbone": model_cfg.backbone,
        "cifar_stem": bool(model_cfg.cifar_stem), "backbone_kwargs": dict(model_cfg.kwargs),
        "pretrain_data": {k: (source.pretrain_cfg.get("data") or {}).get(k) for k in ("name", "subset")},
        "has_cluster_labels": source.cluster_labels is not None,
    }


def build_report(checkpoint: dict, data: dict, features: dict, results: list[dict], timings: dict, command: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "checkpoint": checkpoint, "data": data, "features": features,
        "results": results, "figures": {}, "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def format_value(row: dict) -> str:
    return f"{row['value']:.4g}" if row["metric"] in RAW_METRICS else f"{100 * row['value']:.2f}%"


def _eval_data(report: dict, row: dict) -> str:
    data = report["data"]
    split = data["splits"].get(row["split"], {})
    return f"{data['name']} {row['split']} ({split.get('images', '?')} images)"


def table_rows(report: dict) -> list[list[str]]:
    epochs = report["checkpoint"].get("epochs")
    return [
        [row["protocol"], protocol_details(row), row["level"], row["metric"], format_value(row),
         _eval_data(report, row), "random init" if report["checkpoint"]["kind"] == "random" else str(epochs)]
        for row in report["results"]
    ]


def render_markdown(report: dict) -> str:
    ckpt = report["checkpoint"]
    lines = [
        f"# Evaluation of `{ckpt['path']}`", "",
        f"- checkpoint: {ckpt['kind']}, method {ckpt['method']}, backbone {ckpt['backbone']}"
        f"{' (CIFAR stem)' if ckpt['cifar_stem'] else ''}, {ckpt['epochs']} pretraining epochs"
        f" ({ckpt['global_step']} steps)",
        f"- features: {report['features']['dim']}-d pooled backbone output, frozen; eval transform {report['features']['transform']}",
        f"- data: {report['data']['name']} from {report['data']['source']}; all numbers are offline (frozen features), "
        "none are online probes", "",
        "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(report)]
    lines += sea_section(report) + fewshot_section(report) + diagnostics_section(report)
    lines += ["", f"report schema v{report['schema_version']}, written {report['created']}; timings (s): {report['timings_s']}", ""]
    return "\n".join(lines)


def sea_section(report: dict) -> list[str]:
    """SeA beside the plain probe, on the same features, level by level."""
    plain = {(r["level"], r["metric"]): r["value"] for r in report["results"] if r["protocol"] == "offline-linear"}
    sea = [r for r in report["results"] if r["protocol"] == "sea"]
    if not sea:
        return []
    lines = ["", "## SeA beside the plain linear probe (same frozen features, test split)", "",
             "| level | metric | plain linear (%) | SeA (%) | SeA − plain (points) |", "|---|---|---:|---:|---:|"]
    for r in sea:
        base = plain.get((r["level"], r["metric"]))
        plain_cell, diff_cell = ("-", "-") if base is None else (f"{100 * base:.2f}", f"{100 * (r['value'] - base):+.2f}")
        lines.append(f"| {r['level']} | {r['metric']} | {plain_cell} | {100 * r['value']:.2f} | {diff_cell} |")
    return lines


def fewshot_section(report: dict) -> list[str]:
    rows = [r for r in report["results"] if r["protocol"] == "fewshot"]
    if not rows:
        return []
    levels = list(dict.fromkeys(r["level"] for r in rows))
    shots = list(dict.fromkeys(r["params"]["shots"] for r in rows))
    cell = {(r["level"], r["params"]["shots"]): r for r in rows}
    lines = ["", "## Label efficiency (test top-1 %, mean ± std over seeds)", "",
             "| labelled per class | " + " | ".join(levels) + " |", "|---|" + "---:|" * len(levels)]
    for n in shots:
        values = [f"{100 * cell[(lv, n)]['value']:.2f} ± {100 * cell[(lv, n)]['params']['std']:.2f}"
                  if (lv, n) in cell else "-" for lv in levels]
        lines.append(f"| {n} | " + " | ".join(values) + " |")
    if "fewshot" in report.get("figures", {}):
        lines += ["", f"![label efficiency]({report['figures']['fewshot']})"]
    return lines


def diagnostics_section(report: dict) -> list[str]:
    if "map" not in report.get("figures", {}):
        return []
    return ["", "## Map of the features (t-SNE; colour: fine class, outline: superclass)", "",
            f"![feature map]({report['figures']['map']})"]


def draw_figures(report: dict, out_dir: Path, artifacts: Optional[dict]) -> dict:
    """The PNGs the results and artifacts call for, as {name: file name in out_dir}."""
    from lightning_modules.evaluation.figures import feature_map, fewshot_plot

    figures = {}
    if fewshot_plot(report["results"], out_dir / "fewshot.png", f"label efficiency: {report['checkpoint']['path']}"):
        figures["fewshot"] = "fewshot.png"
    found = (artifacts or {}).get("map")
    if found is not None:
        data = report["data"]
        feature_map(found["xy"], found["fine"], found["coarse"], data["class_names"], data["superclass_names"],
                    out_dir / "map.png", f"{found['method']} of {len(found['xy'])} {data['name']} {found['split']} "
                    "features: colour = fine class, outline = superclass")
        figures["map"] = "map.png"
    return figures


def write_report(report: dict, out_dir: str | Path, artifacts: Optional[dict] = None) -> tuple[Path, Path]:
    """report.json, report.md and the figures (fewshot.png, map.png) the results call for."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["figures"] = draw_figures(report, out_dir, artifacts)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path
