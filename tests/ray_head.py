"""A real single-node Ray head for tests: 127.0.0.1 only, private temp dir, every process it started
stopped by PID afterwards (never `ray stop`, which kills Ray processes machine-wide).

Use it from a test module with `from ray_head import ray_head  # noqa: F401` and take the fixture
`ray_head` -> dashboard URL (the job-submission address), or call `start_head(temp_dir, env)` as a
context manager when the head needs its own environment (e.g. PATH for the jobs' `python`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest

from s3_utils import free_port

RAY = str(Path(sys.executable).parent / "ray")


def stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the `ray start --block` process and everything it spawned; SIGKILL what is left after 15 s."""
    import psutil

    try:
        procs = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@contextlib.contextmanager
def start_head(temp: Path, env: Optional[Dict[str, str]] = None, num_cpus: int = 2) -> Iterator[str]:
    """Start `ray start --head --block` in `temp`; yield the dashboard URL once it answers."""
    port, dash, client = free_port(), free_port(), free_port()
    # The variable keeps the head on 127.0.0.1 (without it, it binds the external interface).
    full_env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **(env or {})}
    cmd = [RAY, "start", "--head", "--block", "--num-cpus", str(num_cpus), "--port", str(port), "--temp-dir",
           str(temp), "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port",
           str(dash), "--ray-client-server-port", str(client), "--disable-usage-stats", "--include-dashboard", "true"]
    log_path = temp / "ray_start.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{dash}"
        try:
            deadline = time.time() + 240
            while True:
                try:
                    urllib.request.urlopen(f"{url}/api/version", timeout=5).close()
                    break
                except urllib.error.HTTPError:
                    break           # answering (token auth may refuse anonymous calls): it is up
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"ray head did not come up: {log_path.read_text()[-3000:]}")
                time.sleep(1)
            yield url
        finally:
            stop_tree(proc)


@pytest.fixture
def ray_head(tmp_path_factory):
    with start_head(tmp_path_factory.mktemp("rayhead")) as url:
        yield url
