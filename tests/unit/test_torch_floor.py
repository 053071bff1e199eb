"""The torch floor in setup.py is the version the GPU machine runs (2.11); CI runs a newer torch, so a
newer-only API would pass CI and fail there. No torch 2.11 CPU wheel is reachable from this build
machine (only PyPI's CUDA builds, gigabytes with their CUDA libraries), so instead of running the suite
under 2.11 we hold the line with an allowlist: every torch API the library uses (found by AST,
tests/helpers/torch_api_scan.py) must be listed in tests/helpers/torch_api_floor.txt, whose entries were
checked to exist in torch <= the floor. A new API fails this test until someone checks it and adds it;
`benchmarks/gpu_suite.py --dry-run` resolves every entry on the torch it runs on, so the first run on
the 2.11 machine verifies the list itself."""
from __future__ import annotations

import re
from pathlib import Path

from torch_api_scan import REPO, resolves, used_torch_apis

MANIFEST = Path(__file__).resolve().parents[1] / "helpers" / "torch_api_floor.txt"


def manifest():
    lines = [ln.split("#")[0].strip() for ln in MANIFEST.read_text().splitlines()]
    return {ln for ln in lines if ln}


def floor_from_setup() -> str:
    m = re.search(r'"torch>=([0-9.]+)"', (REPO / "setup.py").read_text())
    assert m, "setup.py has no torch>= requirement"
    return m.group(1)


def test_setup_floor_is_the_gpu_machines_torch():
    assert floor_from_setup() == "2.11.0"
    assert "floor: torch 2.11" in MANIFEST.read_text()


def test_every_used_torch_api_is_on_the_floor_list():
    unknown = sorted(used_torch_apis() - manifest())
    assert not unknown, (f"torch APIs not yet checked against torch {floor_from_setup()}: {unknown}. Check each "
                         f"exists in that version, then add it to {MANIFEST.name}")


def test_the_list_resolves_in_the_installed_torch():
    assert not [n for n in sorted(manifest()) if not resolves(n)]
    assert not resolves("torch.nn.functional.no_such_function")  # the resolver can say no


def test_the_scan_finds_apis_through_aliases():
    found = used_torch_apis(["ops/attention.py", "mvar_dist/precision.py"])
    assert "torch.nn.functional.scaled_dot_product_attention" in found  # via `import ... as F`
    assert "torch.nn.attention.flex_attention.create_block_mask" in found  # from-import
    assert "torch.backends.cuda.matmul" in found
