"""Every installed distribution imports (issue 25): a package that cannot be imported (torchvision's
CUDA wheel beside the CPU torch failed with `operator torchvision::nms does not exist`, taking `lpips`
and `pytorch_fid` with it) means the installed set is inconsistent, whatever the tests work around.

One interpreter imports every top-level module of every distribution; whatever fails there is retried
alone in a fresh interpreter (an import can fail only because of another's side effects, e.g.
setuptools after distutils), and only what fails alone too is reported.

One documented exception, `PARTIAL`: torch-fidelity is installed (`pip install --no-deps`, Makefile) for its
Inception feature extractor only (the adm-mode parity tests). That module needs only torch; the package
`__init__` imports torch-fidelity's dataset/metric code, which needs torchvision, deliberately not installed.
For it the test imports exactly that module, under a bare package module standing for `torch_fidelity`
(its installed `__path__`, `__init__` not run) - as tests/helpers/fidelity_inception.py does."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# distribution -> the one module it is installed for (see the module docstring)
PARTIAL = {"torch-fidelity": "torch_fidelity.feature_extractor_inceptionv3"}

_DRIVER = r"""
import importlib, importlib.metadata as md, importlib.util, json, re, sys, types, warnings
warnings.filterwarnings("ignore")

def import_partial(module):
    top = module.split(".")[0]
    spec = importlib.util.find_spec(top)
    bare = types.ModuleType(top)
    bare.__path__, bare.__spec__ = list(spec.submodule_search_locations), spec
    sys.modules[top] = bare
    importlib.import_module(module)

def top_levels(dist):
    text = dist.read_text("top_level.txt")
    if text:
        return [t for t in text.split() if t and not t.startswith("_")]
    names = set()
    for f in dist.files or []:
        head = f.parts[0] if f.parts else ""
        if not head or head.endswith((".dist-info", ".data", ".pth")) or head in ("..", "bin") or head.startswith("_"):
            continue
        if len(f.parts) > 1 and (dist.locate_file(head) / "__init__.py").exists():
            names.add(head)
        elif len(f.parts) == 1 and head.endswith(".py"):
            names.add(head[:-3])
    return sorted(names)

partial = json.loads(sys.argv[1])
only = sys.argv[2:]
failed = {}
for dist in md.distributions():
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()  # PEP 503: torch_fidelity == torch-fidelity
    if only and name not in only:
        continue
    for mod in [partial[name]] if name in partial else top_levels(dist):
        try:
            import_partial(mod) if name in partial else importlib.import_module(mod)
        except BaseException as e:
            failed.setdefault(name, []).append(f"{mod}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
print("RESULT " + json.dumps(failed))
"""


def _import_all(only=()) -> dict:
    p = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(PARTIAL), *only], capture_output=True, text=True, timeout=600)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, p.stdout[-2000:] + p.stderr[-3000:]
    return json.loads(line[-1][len("RESULT "):])


def test_every_installed_distribution_imports():
    suspects = _import_all()
    failing = {name: why for name in suspects for why in [_import_all([name]).get(name)] if why}
    assert not failing, f"installed distributions that do not import: {json.dumps(failing, indent=1)}"


def test_torch_fidelity_is_installed_for_its_inception_module():
    """The Makefile installs it; its Inception module imports without torchvision (the adm parity tests' need)."""
    failed = _import_all(["torch-fidelity"])
    assert importlib.util.find_spec("torch_fidelity") is not None, "make venv installs torch-fidelity (--no-deps)"
    assert not failed, failed
