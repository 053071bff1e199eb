"""The deterministic install: constraints.txt, its torch-aware adaptation, and the venv matching it."""
from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys

import pytest

from mvar_dist.install_lock import constraints_for, locked_versions

from conftest import REPO

LOCK = REPO / "constraints.txt"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_lines_are_exact_pins():
    pins = locked_versions(LOCK.read_text())
    assert "torch" in pins and len(pins) > 50
    with pytest.raises(ValueError, match="name==version"):
        locked_versions("numpy>=2\n")


def test_same_torch_keeps_the_lock_verbatim():
    text = LOCK.read_text()
    assert constraints_for(text, locked_versions(text)["torch"]) == text


def test_other_torch_drops_the_family_and_pins_the_installed_one():
    text = "numpy==2.4.6\ntorch==2.13.0+cpu\ntorchvision==0.28.0\ntriton==3.9.0\nnvidia-nccl-cu13==2.30.7\n"
    out = locked_versions(constraints_for(text, "2.14.1"))
    assert out == {"numpy": "2.4.6", "torch": "2.14.1"}


def test_every_direct_requirement_is_locked():
    """Each requirement of the package and its CI extras has an exact version in the lock."""
    pins = {_norm(k) for k in locked_versions(LOCK.read_text())}
    reqs = importlib.metadata.requires("mvar-dist") or []
    names = set()
    for req in reqs:
        extra = re.search(r'extra == "([^"]+)"', req)
        if extra and extra.group(1) not in {"data", "train", "eval", "dev"}:
            continue  # the gpu extra compiles against the user's torch and is not locked
        names.add(_norm(re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0]))
    assert names and not names - pins, f"not in constraints.txt: {sorted(names - pins)}"


def _extra_only(extra: str) -> set:
    """Names required only by one extra of the package (`make venv` does not install the `parity` extra)."""
    reqs = importlib.metadata.requires("mvar-dist") or []
    return {_norm(re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0]) for r in reqs if f'extra == "{extra}"' in r}


def _installed_in_fresh_interpreter() -> dict:
    """name -> version as a fresh interpreter sees them: once setuptools is imported (by any earlier test) it
    appends its _vendor folder to sys.path, whose vendored dist-infos (an older `packaging`) would shadow the real ones."""
    code = ("import importlib.metadata as md, json; d = {}\n"
            "for x in md.distributions(): d.setdefault(x.metadata['Name'], x.version)\n"
            "print(json.dumps(d))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return {_norm(k): v for k, v in json.loads(out).items()}


def test_installed_versions_match_the_lock():
    """The venv `make venv` built is the locked set: nothing upgraded torch or anything else."""
    pins = {_norm(k): v for k, v in locked_versions(LOCK.read_text()).items()}
    installed = _installed_in_fresh_interpreter()
    if installed.get("torch") != pins["torch"]:
        pytest.skip(f"this venv uses torch {installed.get('torch')} (TORCH_SPEC), not the locked CPU build")
    wrong = {n: (installed[n], v) for n, v in pins.items() if n in installed and installed[n] != v}
    missing = sorted(set(pins) - set(installed) - _extra_only("parity"))
    assert not wrong and not missing, f"differs from constraints.txt: {wrong}; missing: {missing}"


def test_cli_writes_constraints_for_the_running_torch(tmp_path):
    out = tmp_path / "c.txt"
    subprocess.run([sys.executable, str(REPO / "mvar_dist" / "install_lock.py"), str(LOCK), str(out)],
                   check=True, capture_output=True, text=True)
    assert locked_versions(out.read_text())["torch"] == importlib.metadata.version("torch")
