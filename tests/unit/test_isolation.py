"""The test run's private HOME (conftest.py): nothing under ~ from an earlier run can reach a test."""
import os
from pathlib import Path

import conftest


def test_home_and_tool_dirs_are_private_to_this_run():
    home = Path.home()
    assert Path(os.environ["HOME"]) == home and home.parent.name.startswith("mvar-tests-")
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        assert Path(os.environ[var]).parent == home
    assert Path(os.environ["RAY_TMPDIR"]).parent == home.parent
    assert not any(var in os.environ for var in conftest.RAY_CLIENT_VARS)
    assert os.environ["PIP_CACHE_DIR"] and not Path(os.environ["PIP_CACHE_DIR"]).is_relative_to(home)
