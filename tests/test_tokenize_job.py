"""`ray job submit` of launchers/tokenize.py against a real Ray head started by the test:
127.0.0.1 only, private temp dir, every process it started stopped by PID afterwards."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s3_utils import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")


def _stop_tree(proc: subprocess.Popen) -> None:
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


@pytest.fixture
def ray_head(tmp_path_factory):
    temp = tmp_path_factory.mktemp("rayhead")
    port, dash, client = free_port(), free_port(), free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    cmd = [RAY, "start", "--head", "--block", "--num-cpus", "2", "--port", str(port), "--temp-dir", str(temp),
           "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client), "--disable-usage-stats", "--include-dashboard", "true"]
    log = open(temp / "ray_start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=5).close()
                break
            except urllib.error.HTTPError:
                break               # answering (token auth may refuse anonymous calls): it is up
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray head did not come up: {(temp / 'ray_start.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        _stop_tree(proc)
        log.close()


def test_ray_job_submit_tokenizes_on_the_cluster(ray_head, demo_images, tmp_path):
    from mvar_dist.config import load_config
    from mvar_dist.data_pipeline import VariantSpec, load_rows, verify
    from mvar_dist.data_pipeline.augment import make_variants, to_model_input
    from mvar_dist.tokenizer import MultiScaleVQVAE

    dest = tmp_path / "shards"
    entry = [sys.executable, str(REPO / "launchers" / "tokenize.py"), "--config", "mvar_tiny", "--source",
             str(demo_images), "--dest", str(dest), "--images-per-shard", "20", "--batch-size", "16"]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    out = subprocess.run([RAY, "job", "submit", "--address", ray_head, "--", *entry], env=env, capture_output=True,
                         text=True, timeout=420)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "succeeded" in out.stdout and "[tokenize] done: 80 rows from 40 images" in out.stdout
    assert verify(str(dest)) == []
    m = json.loads((dest / "manifest.json").read_text())
    assert [s["name"] for s in m["shards"]] == ["shard-00000.parquet", "shard-00001.parquet"]
    rows = load_rows(str(dest))
    cfg = load_config("mvar_tiny")
    vae = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0)
    first = rows["image_id"][0]
    crops = make_variants(first, Image.open(demo_images / first).convert("RGB"),
                          VariantSpec(count=cfg.data.variants, seed=cfg.seed, resolution=64))
    expect = np.concatenate([t.numpy() for t in vae.img_to_ids(to_model_input(crops))], axis=1)
    np.testing.assert_array_equal(rows["tokens"][:cfg.data.variants].astype(np.int64), expect)
