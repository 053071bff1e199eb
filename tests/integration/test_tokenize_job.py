"""`ray job submit` of launchers/pretokenize.py against a real Ray head started by the test:
127.0.0.1 only, private temp dir, every process it started stopped by PID afterwards."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ray_head import RAY, ray_head  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_ray_job_submit_tokenizes_on_the_cluster(ray_head, demo_images, tmp_path):
    from mvar_dist.config import load_config
    from mvar_dist.data_pipeline import VariantSpec, load_rows, verify
    from mvar_dist.data_pipeline.augment import make_variants, to_model_input
    from mvar_dist.vqvae import MultiScaleVQVAE

    dest = tmp_path / "shards"
    entry = [sys.executable, str(REPO / "launchers" / "pretokenize.py"), "--config", "mvar_tiny", "--source",
             str(demo_images), "--dest", str(dest), "--images-per-shard", "20", "--batch-size", "16"]
    with pytest.raises(urllib.error.HTTPError) as refused:   # the head enforces its token auth
        urllib.request.urlopen(f"{ray_head.url}/api/jobs/", timeout=30)
    assert refused.value.code == 401
    env = {**os.environ, **ray_head.auth}   # the head's token, passed explicitly (RAY_AUTH_MODE/RAY_AUTH_TOKEN)
    out = subprocess.run([RAY, "job", "submit", "--address", ray_head.url, "--", *entry], env=env,
                         capture_output=True, text=True, timeout=420)
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
