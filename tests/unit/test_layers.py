"""Imports only point down: each package of mvar_dist may import its own modules and packages of lower
layers, never a higher layer or another package of its own layer (so there is no package cycle).

Every import counts, function-level ones included (they are how a cycle would hide). The layers are
docs/architecture.md's; a new package must be added here, in its place.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Lowest first. ops/, data_pipeline/ and configs/ are installed as mvar_dist.ops / .data_pipeline / .configs.
LAYERS = [
    {"__init__", "fsio", "configs", "install_lock", "distributed", "errors", "precision"},  # import no other package
    {"config", "ops", "demo_data", "preflight"},                    # typed configs, fused ops, demo images, start checks
    {"vqvae", "model", "doctor"},                                   # the networks (doctor: their op paths)
    {"data", "runs", "plan"},                                       # token loader; run/checkpoint layout; planner
    {"data_pipeline"},                                              # images -> token shards (Ray)
    {"train"},                                                      # the generator's and the tokenizer's trainers
    {"eval"},                                                       # both evaluation services, FD-demo, preview
    {"scaling"},                                                    # sweeps over runs
    {"__main__"},                                                   # command line
]
FOLDERS = {"ops": REPO / "ops", "data_pipeline": REPO / "data_pipeline", "configs": REPO / "configs"}


def _package_of(module: str) -> str:
    return module.split(".")[1] if module.startswith("mvar_dist.") else ""


def _imports(path: Path, package_parts):
    """Top-level mvar_dist package names this file imports; package_parts: the dotted package it is in."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {_package_of(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package_parts[:len(package_parts) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            out |= {a.name for a in node.names} if name == "mvar_dist" else {_package_of(name)}
    return out - {""}


def _files():
    """(file, its top-level package, the dotted package it is in)."""
    for path in sorted((REPO / "mvar_dist").rglob("*.py")):
        parts = ["mvar_dist", *path.relative_to(REPO / "mvar_dist").with_suffix("").parts]
        yield path, parts[1], parts[:-1] if len(parts) > 2 else parts[:1]
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = ["mvar_dist", package, *path.relative_to(folder).with_suffix("").parts]
            yield path, package, parts[:-1]


def test_every_import_points_down():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    wrong = []
    for path, package, parts in _files():
        assert package in layer, f"{path}: package {package!r} has no layer in tests/unit/test_layers.py"
        for target in _imports(path, parts) - {package}:
            assert target in layer, f"{path} imports mvar_dist.{target}, which has no layer"
            if layer[target] >= layer[package]:
                wrong.append(f"{path.relative_to(REPO)}: {package} (layer {layer[package]}) imports "
                             f"{target} (layer {layer[target]})")
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)
