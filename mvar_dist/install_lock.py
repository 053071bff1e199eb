"""The pip constraints `make venv` installs with: constraints.txt, adapted to the torch already installed.

constraints.txt is the exact set of versions CI was green with (CPU torch included). `make venv` installs
torch first (TORCH_SPEC, maybe a CUDA build), then everything else under the constraints this module
writes. If the installed torch is the locked one, that is constraints.txt verbatim. Otherwise (a GPU user
chose another torch) the torch family (torch, torchvision, triton, nvidia-*, cuda-*) is dropped from the lock
and torch is pinned to the installed version, so pip can never replace it and picks the companions that
match it; every other package keeps its locked version.

Runs by path before the package is installed (`python mvar_dist/install_lock.py LOCK OUT`): stdlib only.
"""
from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

TORCH_FAMILY = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)$")


def _name(line: str) -> str:
    return re.split(r"[=<>!~ \[;]", line, maxsplit=1)[0].strip().lower().replace("_", "-")


def locked_versions(lock_text: str) -> dict[str, str]:
    """{normalised name: version} of the `name==version` lines of a lock file."""
    pins = {}
    for line in lock_text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            if "==" not in line:
                raise ValueError(f"lock line is not name==version: {line!r}")
            pins[_name(line)] = line.split("==", 1)[1].strip()
    return pins


def constraints_for(lock_text: str, installed_torch: str) -> str:
    """The constraints text for a venv whose torch is `installed_torch`."""
    if locked_versions(lock_text).get("torch") == installed_torch:
        return lock_text
    kept = [line for line in lock_text.splitlines()
            if not line.strip() or line.lstrip().startswith("#") or not TORCH_FAMILY.match(_name(line))]
    kept.append(f"# torch family follows the installed torch (not the locked one):\ntorch=={installed_torch}")
    return "\n".join(kept) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python mvar_dist/install_lock.py LOCK_FILE OUT_FILE", file=sys.stderr)
        return 2
    lock_path, out_path = Path(argv[0]), Path(argv[1])
    lock_text = lock_path.read_text()
    torch_version = importlib.metadata.version("torch")
    if locked_versions(lock_text).get("torch") != torch_version:
        print(f"install_lock: torch {torch_version} is not the locked one; torchvision/triton/... follow it")
    out_path.write_text(constraints_for(lock_text, torch_version))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
