"""torch-fidelity's Inception module for the adm-mode parity tests, without torchvision.

torch-fidelity is installed with `pip install --no-deps` (Makefile): its Inception feature extractor
(`feature_extractor_inceptionv3` and the helpers/defaults/deprecations/feature_extractor_base/
interpolate_compat_tensorflow modules it imports) needs only torch, but the package `__init__` imports its
dataset and metric code, which imports torchvision - not installed on the CPU install (PyPI's torchvision
wheel is a CUDA build that does not load beside the CPU torch). So where torchvision does not import, a bare
package module with the installed `__path__` stands for `torch_fidelity` and its `__init__` never runs; the
submodule then loads from the installed files as usual. Nothing of torchvision is faked.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest

PACKAGE = "torch_fidelity"
INCEPTION_MODULE = "torch_fidelity.feature_extractor_inceptionv3"


def torchvision_imports() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a torchvision built for another torch raises RuntimeError
        return False
    return True


def fidelity_inception():
    """The `torch_fidelity.feature_extractor_inceptionv3` module (skips when torch-fidelity is not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        pytest.skip("torch-fidelity is not installed (make venv installs it with --no-deps)")
    if PACKAGE not in sys.modules and not torchvision_imports():
        bare = types.ModuleType(PACKAGE)
        bare.__path__ = list(spec.submodule_search_locations)
        bare.__spec__ = spec
        sys.modules[PACKAGE] = bare
    return importlib.import_module(INCEPTION_MODULE)


def fidelity_metrics():
    """torch-fidelity's FID and IS functions; they import torchvision, so skip where it does not import."""
    if not torchvision_imports():
        pytest.skip("torch-fidelity's FID/IS code imports torchvision, which does not import here")
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric

    return fid_features_to_statistics, fid_statistics_to_metric, isc_features_to_metric
