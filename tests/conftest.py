"""Shared test set-up: a private HOME for the whole run, the parity fixture folders, small temp datasets,
GPU marker handling.

Isolation: `pytest_configure` points HOME, XDG_CONFIG_HOME, XDG_CACHE_HOME and RAY_TMPDIR at a fresh
temp folder before any test imports Ray, so nothing a test writes under ~ (Ray's ~/.ray/auth_token,
caches) outlives the run or leaks in from an earlier one; subprocesses inherit it through os.environ.
pip keeps working: its download cache and the user's pip config file stay the real ones.

Parity fixtures: tests/fixtures/ (vendored, always present) is the default parity run. The large
fixtures (`MVAR_SHARED_FIXTURES`, default ../shared/fixtures beside the repo) are the extended run:
tests that take `shared_fixtures` skip when the folder is absent, summed up in one line at the end.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Layout: unit/ (one process), integration/ (several processes, Ray, S3, subprocesses), helpers/ (shared
# helpers and the test-only launcher wrappers). Helpers import by bare name (`from s3_utils import ...`);
# so do the few test modules that reuse another's fixtures across the two groups (`from test_loader import
# shards` in integration/test_loader_mp.py).
for _group in ("integration", "unit", "helpers"):
    sys.path.insert(0, str(Path(__file__).resolve().parent / _group))
SHARED_FIXTURES = Path(os.environ.get("MVAR_SHARED_FIXTURES", REPO.parent / "shared" / "fixtures"))
EXTENDED_SKIP = (f"extended parity run: large fixtures not found at {SHARED_FIXTURES} "
                 f"(set MVAR_SHARED_FIXTURES to run it)")
# A user's shell settings for a Ray cluster of theirs must not reach the clusters the tests start.
RAY_CLIENT_VARS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

_private_root = None


def _isolate_home() -> Path:
    """Fresh HOME / XDG / Ray temp dirs for this process and its children; returns the root to delete."""
    real_home = Path.home()
    real_cache = Path(os.environ.get("XDG_CACHE_HOME") or real_home / ".cache")
    real_config = Path(os.environ.get("XDG_CONFIG_HOME") or real_home / ".config")
    root = Path(tempfile.mkdtemp(prefix="mvar-tests-"))   # short: Ray's socket paths must fit in 107 bytes
    dirs = {"HOME": root / "home", "XDG_CONFIG_HOME": root / "home" / ".config",
            "XDG_CACHE_HOME": root / "home" / ".cache", "RAY_TMPDIR": root / "ray"}
    for d in dirs.values():
        d.mkdir(parents=True)
    os.environ.setdefault("PIP_CACHE_DIR", str(real_cache / "pip"))
    if "PIP_CONFIG_FILE" not in os.environ:   # e.g. a private index: `pip wheel` in test_package needs it
        for conf in (real_config / "pip" / "pip.conf", real_home / ".pip" / "pip.conf"):
            if conf.is_file():
                os.environ["PIP_CONFIG_FILE"] = str(conf)
                break
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))  # as `make test` sets it
    for var in RAY_CLIENT_VARS:
        os.environ.pop(var, None)
    os.environ.update({k: str(v) for k, v in dirs.items()})
    return root


def pytest_configure(config):
    global _private_root
    if _private_root is None:
        _private_root = _isolate_home()


def pytest_unconfigure(config):
    global _private_root
    if _private_root is not None:
        shutil.rmtree(_private_root, ignore_errors=True)
        _private_root = None


def pytest_report_header(config):
    state = "present: extended parity runs" if SHARED_FIXTURES.is_dir() else "absent: extended parity skipped"
    return [f"parity fixtures: {FIXTURES} (default); {SHARED_FIXTURES} ({state})", f"test HOME: {os.environ['HOME']}"]


def _skip_extended():
    pytest.skip(EXTENDED_SKIP)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Report the extended-run skips at one place (this file), so `-rs` folds them into a single line
    instead of one per test (pytest puts a skip raised in a fixture at the test's location)."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and EXTENDED_SKIP in report.longrepr[2]:
        report.longrepr = (__file__, _skip_extended.__code__.co_firstlineno + 1, report.longrepr[2])
    return report


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if EXTENDED_SKIP in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} tests skipped: {EXTENDED_SKIP}")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """Folder of the large official-code parity fixtures (the extended run); skips the test when absent."""
    if not SHARED_FIXTURES.is_dir():
        _skip_extended()
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def small_fixtures() -> Path:
    """The vendored small parity fixtures (tests/fixtures, see its README.md)."""
    return FIXTURES


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory) -> Path:
    """A small embedded-dataset ImageFolder (10 classes x 4 images, 64 px); returns the split dir."""
    from mvar_dist.demo_data import write_dataset

    return write_dataset(tmp_path_factory.mktemp("demo_data"), images_per_class=4, size=64, seed=0)


@pytest.fixture
def one_thread():
    """torch (and numpy's BLAS) on one thread: on the 2 shared cores intra-op threads of small ops
    spin against each other and run several times slower than one thread. Only a matter of speed."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(1)
    except ImportError:
        limits = None
    yield
    torch.set_num_threads(n)
    if limits is not None:
        limits.restore_original_limits()
