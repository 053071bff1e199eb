"""YAML files + dotted command-line overrides -> a validated `RunConfig`.

A YAML file may name a `base:` (another YAML file, relative to itself or to the configs
folder) whose values it overrides; this is how the per-depth model presets share the per-depth
recipes. Overrides look like `model.depth=16 optim.tblr=8e-5 tokenizer.patch_nums=[1,2,4,8]`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Union

import yaml

from mvar_dist.fsio import write_text_atomic

from .errors import ConfigError
from .schema import RunConfig

PathLike = Union[str, os.PathLike]


def configs_dir() -> Path:
    """The folder holding the shipped YAML presets and zero3.json (source tree or installed)."""
    import mvar_dist.configs as shipped  # installed from the top-level configs/ folder

    return Path(shipped.__file__).resolve().parent


def list_presets() -> list:
    """Names of every shipped run preset (YAML files at the top of configs/)."""
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def find_config(name_or_path: PathLike) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (configs_dir() / p, configs_dir() / f"{p}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError("config", f"no config file '{name_or_path}' (presets: {', '.join(list_presets())})")


def read_yaml_tree(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    if path in seen:
        raise ConfigError("base", f"circular base chain: {' -> '.join(map(str, seen + (path,)))}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = path.parent / base
    if not base_path.is_file():
        base_path = find_config(base)
    return deep_merge(read_yaml_tree(base_path, seen + (path,)), data)


def deep_merge(a: Dict[str, Any], b: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def parse_overrides(overrides: Iterable[str]) -> Dict[str, Any]:
    """['model.depth=16', 'optim.tblr=8e-5'] -> nested dict with YAML-typed values."""
    tree: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "override must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            raise ConfigError(key.strip(),
                              f"value {raw!r} is not valid YAML (quote it: {key.strip()}='\"{raw}\"')") from None
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "8e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, f"expected a float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(key, f"expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    return value


def apply_mapping(obj: Any, data: Mapping[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(key, f"unknown key (valid: {', '.join(sorted(names))})")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            if not isinstance(v, Mapping):
                raise ConfigError(key, f"expected a mapping of {type(cur).__name__} fields, got {v!r}")
            apply_mapping(cur, v, f"{key}.")
        else:
            setattr(obj, k, _coerce(key, v, hints[k]))


def fill_config(cfg: Any, data: Mapping[str, Any], overrides: Iterable[str] = ()) -> Any:
    """A config dataclass filled from YAML data with the dotted overrides on top (unvalidated); returns cfg."""
    apply_mapping(cfg, deep_merge(dict(data), parse_overrides(overrides)))
    return cfg


def build_config(data: Mapping[str, Any], overrides: Iterable[str] = ()) -> RunConfig:
    return fill_config(RunConfig(), data, overrides).resolve()


def load_config(name_or_path: Optional[PathLike] = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Load a YAML preset/file (or the defaults when None), apply overrides, resolve and validate."""
    data = read_yaml_tree(find_config(name_or_path).resolve()) if name_or_path else {}
    return build_config(data, overrides)


def to_dict(cfg: RunConfig) -> Dict[str, Any]:
    def plain(v):
        return list(plain(x) for x in v) if isinstance(v, (list, tuple)) else v

    return {k: ({kk: plain(vv) for kk, vv in v.items()} if isinstance(v, dict) else plain(v))
            for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: RunConfig, folder: PathLike, filename: str = "config.yaml") -> Path:
    """Write the resolved config next to an output, atomically; returns the file path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def config_hash(cfg: RunConfig) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]
