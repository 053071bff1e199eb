"""Which torch APIs the library uses: every `torch.*` dotted name (imports, attribute chains through
torch or an imported torch module/name) in the library's source, found by AST. Used by
test_torch_floor.py against tests/helpers/torch_api_floor.txt (see that test's docstring)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Iterable, Set

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("mvar_dist", "ops", "data_pipeline", "benchmarks/gpu_suite.py")


def _names_in(source: str) -> Set[str]:
    tree = ast.parse(source)
    alias, out = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "torch":
                    alias[a.asname or "torch"] = a.name if a.asname else "torch"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch":
            for a in node.names:
                out.add(f"{node.module}.{a.name}")
                alias[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, base = [], node
            while isinstance(base, ast.Attribute):
                parts.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in alias:
                out.add(".".join([alias[base.id], *reversed(parts)]))
    return out


def used_torch_apis(paths: Iterable[str] = SCANNED) -> Set[str]:
    """The maximal dotted torch names used under `paths` (a name that prefixes another is dropped)."""
    names: Set[str] = set()
    for rel in paths:
        p = REPO / rel
        for f in [p] if p.is_file() else sorted(p.rglob("*.py")):
            names |= _names_in(f.read_text())
    return {n for n in names if not any(m.startswith(n + ".") for m in names)}


def resolves(name: str) -> bool:
    """True when `name` (torch.a.b.c) exists in the installed torch: the longest importable module
    prefix, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False
