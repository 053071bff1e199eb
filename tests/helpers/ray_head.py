"""A real single-node Ray head for tests: 127.0.0.1 only, private temp dir, every process it started
stopped by PID afterwards (never `ray stop`, which kills Ray processes machine-wide).

Use it from a test module with `from ray_head import ray_head  # noqa: F401` and take the fixture
`ray_head` -> RayHead (`.url` is the job-submission address), or call `start_head(temp_dir, env)` as a
context manager when the head needs its own environment (e.g. PATH for the jobs' `python`).

Auth is explicit, never taken from ~: every head runs with RAY_AUTH_MODE=token and a fresh random
token in RAY_AUTH_TOKEN (Ray's first token source; its jobs inherit both). A client subprocess adds
`head.auth` to its environment; an in-process client (ray.init, the job-submission SDK) runs inside
`client_env(...)`, which also drops Ray's per-process cached token.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
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


def auth_env() -> Dict[str, str]:
    """Token auth with a new random token (256 bits, as `ray get-auth-token --generate` makes)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@dataclass(frozen=True)
class RayHead:
    url: str                # dashboard URL: the job-submission address
    auth: Dict[str, str]    # what a client's environment needs to reach it (see auth_env)

    @property
    def token(self) -> str:
        return self.auth["RAY_AUTH_TOKEN"]


def _reset_ray_auth_cache() -> None:
    """Ray caches the auth mode and the token once per process; make it re-read the environment."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _set_environ(values: Dict[str, Optional[str]]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def client_env(changes: Dict[str, Optional[str]]) -> Iterator[None]:
    """Apply `changes` to os.environ (None unsets) for in-process Ray clients, restore them afterwards."""
    saved = {k: os.environ.get(k) for k in changes}
    _set_environ(changes)
    _reset_ray_auth_cache()
    try:
        yield
    finally:
        _set_environ(saved)
        _reset_ray_auth_cache()


@contextlib.contextmanager
def start_head(temp: Path, env: Optional[Dict[str, str]] = None, num_cpus: int = 2) -> Iterator[RayHead]:
    """Start `ray start --head --block` in `temp` with token auth; yield it once the dashboard answers."""
    port, dash, client = free_port(), free_port(), free_port()
    auth = auth_env()
    # The variable keeps the head on 127.0.0.1 (without it, it binds the external interface).
    full_env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **(env or {}), **auth}
    full_env.pop("RAY_AUTH_TOKEN_PATH", None)
    cmd = [RAY, "start", "--head", "--block", "--num-cpus", str(num_cpus), "--port", str(port), "--temp-dir",
           str(temp), "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port",
           str(dash), "--ray-client-server-port", str(client), "--disable-usage-stats", "--include-dashboard", "true"]
    log_path = temp / "ray_start.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{dash}"
        bearer = {"Authorization": f"Bearer {auth['RAY_AUTH_TOKEN']}"}
        probe = urllib.request.Request(f"{url}/api/version", headers=bearer)
        try:
            deadline = time.time() + 240
            while True:
                try:
                    urllib.request.urlopen(probe, timeout=5).close()
                    break
                except urllib.error.HTTPError as e:
                    if e.code in (401, 403):
                        pytest.fail(f"ray head refused the test's token (HTTP {e.code}): "
                                    f"{log_path.read_text()[-3000:]}")
                    break           # answering: it is up
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"ray head did not come up: {log_path.read_text()[-3000:]}")
                time.sleep(1)
            yield RayHead(url, auth)
        finally:
            stop_tree(proc)


@pytest.fixture
def ray_head(tmp_path_factory):
    with start_head(tmp_path_factory.mktemp("rayhead")) as head:
        yield head
