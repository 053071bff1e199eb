"""Typed configs per component, YAML presets in configs/, dotted command-line overrides."""
from .errors import ConfigError
from .loader import (build_config, config_hash, configs_dir, find_config, list_presets, load_config,
                     parse_overrides, save_config, to_dict)
from .schema import (ARCHS, DEFAULT_PATCH_NUMS, ArchSpec, CheckpointConfig, DataConfig, EmaConfig, EvalConfig,
                     LoggingConfig, ModelConfig, OptimConfig, RunConfig, TokenizerConfig, arch_spec)

__all__ = [
    "ConfigError", "build_config", "config_hash", "configs_dir", "find_config", "list_presets", "load_config",
    "parse_overrides", "save_config", "to_dict", "ARCHS", "ArchSpec", "arch_spec", "DEFAULT_PATCH_NUMS",
    "CheckpointConfig", "DataConfig", "EmaConfig", "EvalConfig", "LoggingConfig", "ModelConfig", "OptimConfig", "RunConfig",
    "TokenizerConfig",
]
