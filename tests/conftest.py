"""Shared test fixtures: the ../shared fixtures folder, small temp datasets, GPU marker handling."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = Path(os.environ.get("MVAR_SHARED_FIXTURES", REPO.parent / "shared" / "fixtures"))


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
    """Folder of the official-code parity fixtures (../shared/fixtures beside the repo)."""
    if not SHARED_FIXTURES.is_dir():
        pytest.fail(f"parity fixtures not found at {SHARED_FIXTURES} (set MVAR_SHARED_FIXTURES)")
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory) -> Path:
    """A small embedded-dataset ImageFolder (10 classes x 4 images, 64 px); returns the split dir."""
    from mvar_dist.demo_data import write_dataset

    return write_dataset(tmp_path_factory.mktemp("demo_data"), images_per_class=4, size=64, seed=0)
