"""A resumed run continues under the method and model its checkpoint was trained with: a checkpoint of another
method, backbone or head shape is refused before anything is written, naming both sides and the way to start a new
run from its weights instead."""
from __future__ import annotations

from lightning_modules.run.resume import CONFIG_FILE, ResumeError, ResumePoint


def _describe(cfg: dict) -> str:
    method = (cfg.get("method") or {}).get("name", "?")
    model = cfg.get("model") or {}
    stem = " with the CIFAR stem" if model.get("cifar_stem") else ""
    return f"{method} on {model.get('backbone', '?')}{stem}"


def _identity(cfg: dict) -> tuple:
    model = cfg.get("model") or {}
    return (cfg.get("method") or {}).get("name"), model.get("backbone"), bool(model.get("cifar_stem"))


def _refusal(point: ResumePoint, ours: dict, config: str, detail: str = "") -> ResumeError:
    own_config = point.run_dir / CONFIG_FILE if point.run_dir else None
    continue_it = (f" To continue that run, use its own config: python train.py {own_config} resume={point.run_dir}."
                   if own_config and own_config.is_file() else "")
    return ResumeError(
        f"resume={point.checkpoint} is a checkpoint of "
        f"{_describe(point.run_cfg) if point.run_cfg else 'another model'},"
        f" but {config} trains {_describe(ours)}{detail}: a run can only continue under the method and model it was "
        f"trained with. Nothing was written.{continue_it} To start a new {_describe(ours)} run from its backbone "
        f"weights instead, replace resume= by init_backbone={point.checkpoint}"
    )


def check_same_model(point: ResumePoint, cfg: dict, config: str) -> None:
    """Before anything is written: the checkpoint's method, backbone and stem against the config's."""
    if point.run_cfg and _identity(point.run_cfg) != _identity(cfg):
        raise _refusal(point, cfg, config)


def upgraded_shapes(shapes: dict, model) -> dict:
    """The checkpoint's keys as the model will load them: its modules' load pre-hooks (e.g. CoKe's stage-2 buffers,
    which moved under ``clustering.stage2``) rename old keys before ``load_state_dict`` compares them."""
    state = dict(shapes)
    for name, module in model.named_modules():
        for hook in module._load_state_dict_pre_hooks.values():  # torch keeps no public list of them
            hook(state, f"{name}." if name else "", {}, True, [], [], [])
    return state


def check_fits(point: ResumePoint, model, cfg: dict, config: str) -> None:
    """Once the model is built (before the run directory): every tensor of the checkpoint fits the model."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = upgraded_shapes(point.shapes, model)
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    resized = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    if not (missing or extra or resized):
        return
    parts = [f"{len(missing)} tensor(s) it lacks, e.g. {missing[0]}" if missing else "",
             f"{len(extra)} tensor(s) the model has no place for, e.g. {extra[0]}" if extra else "",
             f"{len(resized)} of another shape, e.g. {resized[0]} {tuple(theirs[resized[0]])} against "
             f"{ours[resized[0]]}" if resized else ""]
    detail = "; ".join(p for p in parts if p)
    raise _refusal(point, cfg, config, f" and the checkpoint does not fit its model ({detail})")
