"""Helpers for the parity tests against the official-code fixtures (tests/fixtures and the extended set).

The fixtures are safetensors files: tensors under `<prefix>state.<official name>`, `input.*`, `expect.*`,
plus string metadata (JSON for `hparams`, `margins`, ...). Only safetensors is read here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Tuple

import torch


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The entries under `prefix`, with it removed (e.g. "l2.state." -> the official state dict)."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def read_fixture(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, object]]:
    """(tensors, metadata) of one fixture file; JSON-valued metadata entries are decoded."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        raw = f.metadata() or {}
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    return load_file(str(path)), meta
