"""Compose a run config: schema defaults <- YAML (with ``_base_`` includes) <- ``key=value`` overrides.

Unknown keys and wrong types raise :class:`ConfigError` naming the key and the closest valid one,
before any work starts.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from configs.method_hooks import rename_layers, rule_errors
from configs.ranges import range_errors
from configs.schema import PretrainConfig

CONFIG_DIR = Path(__file__).resolve().parent
BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A config the schema rejects; the message says which key and what to do."""


def _load_yaml_file(path: Path) -> DictConfig | ListConfig:
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as err:  # one line: file, line, column, what is wrong
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"YAML syntax error at {where}: {problem}. Fix that line of the file") from None


def _read_yaml(path: Path, seen: tuple = ()) -> DictConfig:
    if not path.is_file():
        candidates = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml"))
        raise ConfigError(f"config file not found: {path}. Available configs under {CONFIG_DIR}: {', '.join(candidates)}")
    if path.resolve() in seen:
        raise ConfigError(f"config include cycle through {path}")
    node = _load_yaml_file(path)
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    base = node.pop(BASE_KEY, None)
    if base is None:
        return node
    parent = _read_yaml((path.parent / str(base)).resolve(), seen + (path.resolve(),))
    return OmegaConf.merge(parent, node)


def resolve_config_path(name: str | Path) -> Path:
    """Accept a path, or a name relative to ``configs/`` with or without ``.yaml``."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path, CONFIG_DIR / f"{path}.yaml", CONFIG_DIR / "pretrain" / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    return path


def valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            full = f"{prefix}{key}"
            keys.append(full)
            child = node._get_node(key)
            if isinstance(child, DictConfig) and child._metadata.object_type not in (None, dict):
                keys.extend(valid_keys(child, f"{full}."))
    return keys


def _suggest(key: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    if not close:  # compare the last component only, within the same section
        section, _, leaf = key.rpartition(".")
        same_section = [c for c in choices if c.rpartition(".")[0] == section]
        leaves = difflib.get_close_matches(leaf, [c.rpartition(".")[2] for c in same_section], n=1, cutoff=0.5)
        close = [f"{section}.{leaves[0]}" if section else leaves[0]] if leaves else []
    return f" Did you mean `{close[0]}`?" if close else ""


def _expected_type(schema: DictConfig, key: str) -> str:
    section, _, leaf = key.rpartition(".")
    try:
        parent = OmegaConf.select(schema, section) if section else schema
        ref_type = parent._get_node(leaf)._metadata.ref_type
    except Exception:  # noqa: BLE001 - best effort for the message only
        return "another type"
    return getattr(ref_type, "__name__", str(ref_type).replace("typing.", ""))


def _line_of(origin: str, key: str) -> str:
    """``, line N`` where ``key`` (dotted) is set in the YAML file ``origin``; '' when it is not found there."""
    try:
        node = yaml.compose(Path(origin).read_text())
    except (OSError, yaml.YAMLError):
        return ""
    mark = None
    for part in key.split("."):
        if not isinstance(node, yaml.MappingNode):
            return ""
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
        if match is None:
            return ""
        mark, node = match[0].start_mark, match[1]
    return f", line {mark.line + 1}" if mark else ""


def _merge_error(err: OmegaConfBaseException, schema: DictConfig, origin: str) -> tuple[str, str]:
    """(the bad key, one sentence about it)."""
    key = getattr(err, "full_key", None) or str(getattr(err, "key", "") or "")
    where = f"from {origin}{_line_of(origin, key) if Path(origin).is_file() else ''}"
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        return key, f"unknown config key `{key}` ({where}).{_suggest(key, valid_keys(schema))}"
    if isinstance(err, ValidationError):
        return key, (f"wrong type for config key `{key}` ({where}): {err.msg.splitlines()[0]}. "
                     f"`{key}` expects {_expected_type(schema, key)}.")
    return "", f"invalid config ({where}): {err}"


def _without(layer: DictConfig, key: str) -> bool:
    """Drop ``key`` (dotted) from ``layer``; False when it is not there to drop."""
    section, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(layer, section) if section else layer
    if not key or not isinstance(parent, DictConfig) or leaf not in parent:
        return False
    del parent[leaf]
    return True


def _merge_checked(schema: DictConfig, layer: DictConfig, origin: str, problems: Optional[list] = None) -> DictConfig:
    """``schema`` <- ``layer``. A bad key raises ConfigError, or with ``problems`` is recorded there and left out,
    so that every bad key of a config is reported at once."""
    layer = layer.copy()
    while True:
        try:
            return OmegaConf.merge(schema, layer)
        except OmegaConfBaseException as err:
            key, message = _merge_error(err, schema, origin)
            if problems is None or not _without(layer, key):
                raise ConfigError(all_problems([*(problems or []), message])) from None
            problems.append(message)


def all_problems(problems: Sequence[str]) -> str:
    """One problem as it is; several as one numbered paragraph."""
    if len(problems) == 1:
        return problems[0]
    listed = " ".join(f"({i}) {p}{'' if p.endswith(('.', '?')) else '.'}" for i, p in enumerate(problems, 1))
    return f"{len(problems)} problems in the config, fix them all: {listed}"


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"command-line overrides must look like key=value, got: {' '.join(bad)}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"could not parse overrides {list(overrides)}: {err}") from None


def peek(path: str | Path | None, overrides: Sequence[str], key: str, default: Any) -> Any:
    """``key``'s value from the YAML and the overrides alone, before the schemas (whose imports are heavy) are
    merged; ``default`` when it is not set there or the config does not parse (load_config reports that)."""
    try:
        layers = [_read_yaml(resolve_config_path(path)) if path else OmegaConf.create(), parse_overrides(overrides)]
        value = OmegaConf.select(OmegaConf.merge(*layers), key)
    except (ConfigError, OmegaConfBaseException):
        return default
    return default if value is None else value


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    method_schemas: Optional[Mapping[str, type]] = None,
    schema: type = PretrainConfig,
) -> DictConfig:
    """Return the validated config. ``method_schemas`` maps ``method.name`` to its dataclass."""
    file_layer = _read_yaml(resolve_config_path(path)) if path else OmegaConf.create()
    cli_layer = parse_overrides(overrides)
    base, method_schema = OmegaConf.structured(schema), None
    if method_schemas is not None and "method" in base:
        name = OmegaConf.select(cli_layer, "method.name") or OmegaConf.select(file_layer, "method.name") or base.method.name
        if name not in method_schemas:
            raise ConfigError(
                f"unknown method.name `{name}`.{_suggest(str(name), method_schemas)} Known methods: {', '.join(sorted(method_schemas))}"
            )
        method_schema = method_schemas[name]
        base.method = OmegaConf.structured(method_schema)
        rename_layers(method_schema, [(file_layer, str(path or "defaults")), (cli_layer, "the command line")])
    problems: list[str] = []
    merged = _merge_checked(base, file_layer, str(resolve_config_path(path)) if path else "defaults", problems)
    merged = _merge_checked(merged, cli_layer, "the command line", problems)
    try:
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"could not resolve an interpolation in the config: {err}") from None
    OmegaConf.set_readonly(merged, False)
    errors = range_errors(to_plain(merged))
    problems.extend(f"{error}. Set it to a value in range" for error in errors)
    if rules := rule_errors(method_schema, merged):
        problems.append(" ".join(rules))
    if problems:
        raise ConfigError(all_problems(problems))
    return merged


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_plain(cfg: DictConfig | ListConfig) -> Any:
    """Plain python containers (safe to store in a ``weights_only`` checkpoint)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
