"""The Ray tokenisation job end to end on the embedded dataset: local disk, S3 (moto), rejects,
interruption + resume, idempotent re-runs, errors before any work. One Ray runtime for the module."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvar_dist.config import load_config
from mvar_dist.data_pipeline import TokenizeOptions, VariantSpec, load_rows, tokenize, verify
from mvar_dist.data_pipeline.augment import make_variants, to_model_input
from ray_head import auth_env, client_env
from s3_utils import moto_s3  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow      # a Ray runtime, a moto server and a subprocess driver

REPO = Path(__file__).resolve().parents[2]
K = 2
PER_SHARD = 7
BAD = {"checker/zz_garbage.png": "unidentified", "cross/zz_truncated.png": "corrupt image",
       "disc/zz_tiny.png": "too small", "dots/zz_empty.jpg": "empty file"}


@pytest.fixture(scope="module")
def tok_cfg():
    return load_config("mvar_tiny").tokenizer


@pytest.fixture(scope="module")
def images(demo_images, tmp_path_factory) -> Path:
    """The embedded dataset (10 classes x 4, 64 px) + one grayscale image + four bad files."""
    root = tmp_path_factory.mktemp("imgs")
    shutil.copytree(demo_images, root / "train")
    png = (root / "train/checker/00000.png").read_bytes()
    (root / "train/checker/zz_garbage.png").write_bytes(b"definitely not a png")
    (root / "train/cross/zz_truncated.png").write_bytes(png[: len(png) // 3])
    Image.new("RGB", (8, 8), (9, 9, 9)).save(root / "train/disc/zz_tiny.png")
    (root / "train/dots/zz_empty.jpg").write_bytes(b"")
    Image.open(root / "train/rings/00001.png").convert("L").save(root / "train/rings/zz_gray.png")
    return root


@pytest.fixture(scope="module")
def ray_address(moto_s3, tmp_path_factory):  # noqa: F811  (moto first: workers inherit its AWS_* env)
    import ray

    tmp = tmp_path_factory.mktemp("ray")
    with client_env(auth_env()):   # explicit token auth; the launcher subprocesses inherit it
        ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=False)
        assert not (Path.home() / ".ray" / "auth_token").exists()   # nothing written to (the private) HOME
        yield ray.get_runtime_context().gcs_address
        ray.shutdown()


def opts(source, dest, **kw) -> TokenizeOptions:
    return TokenizeOptions(source=str(source), dest=str(dest), variants=VariantSpec(count=K, seed=5, resolution=64),
                           images_per_shard=PER_SHARD, batch_size=16, progress_every=1e9, **kw)


@pytest.fixture(scope="module")
def local_run(ray_address, images, tok_cfg, tmp_path_factory):
    dest = tmp_path_factory.mktemp("local") / "shards"
    tokenize(tok_cfg, opts(images, dest))
    return dest


def test_local_tokens_equal_img_to_ids_on_the_same_crops(local_run, images, tok_cfg):
    from mvar_dist.vqvae import MultiScaleVQVAE

    rows = load_rows(str(local_run))
    assert list(rows["image_id"][::K]) != sorted(rows["image_id"][::K])     # dealt, not listing order
    by_id = np.lexsort((rows["variant"], rows["image_id"]))
    rows = {key: val[by_id] for key, val in rows.items()}
    valid = sorted(p.relative_to(images / "train").as_posix() for p in (images / "train").rglob("*.*")
                   if p.relative_to(images / "train").as_posix() not in BAD)
    assert len(rows["tokens"]) == K * len(valid) == K * 41
    assert list(rows["image_id"][::K]) == valid and list(rows["variant"]) == [0, 1] * len(valid)
    classes = sorted(os.listdir(images / "train"))
    assert list(rows["label"][::K]) == [classes.index(v.split("/")[0]) for v in valid]
    vae = MultiScaleVQVAE.from_config(tok_cfg, seed=0)
    crops = np.concatenate([make_variants(v, Image.open(images / "train" / v).convert("RGB"),
                                          VariantSpec(count=K, seed=5, resolution=64)) for v in valid])
    expect = np.concatenate([t.numpy() for t in vae.img_to_ids(to_model_input(crops))], axis=1)
    np.testing.assert_array_equal(rows["tokens"].astype(np.int64), expect)
    m = json.loads((local_run / "manifest.json").read_text())
    assert m["tokenizer"]["hash"] == vae.weights_hash() and m["tokenizer"]["random_weights"] is True
    assert m["patch_nums"] == [1, 2, 3, 4] and m["resolution"] == 64 and m["num_classes"] == 10
    assert m["variants"]["count"] == K and m["variants"]["seed"] == 5 and m["class_names"] == classes
    assert m["order"]["scheme"] == "pcg64-permutation-v1" and m["order"]["seed"] == 0
    assert len(m["shards"]) == -(-45 // PER_SHARD) and [s["name"] for s in m["shards"]][0] == "shard-00000.parquet"
    assert verify(str(local_run)) == []


def test_bad_files_end_up_in_rejects_with_reasons(local_run):
    rejects = [json.loads(line) for line in (local_run / "rejects.jsonl").read_text().splitlines()]
    assert {r["image_id"]: r["reason"] for r in rejects}.keys() == BAD.keys()
    for r in rejects:
        assert BAD[r["image_id"]] in r["reason"] and r["path"].endswith(r["image_id"])
    m = json.loads((local_run / "manifest.json").read_text())
    assert m["num_rejected"] == 4 and m["num_images"] == 41


def test_rerun_is_a_no_op_and_other_settings_are_refused(local_run, images, tok_cfg):
    before = {p.name: p.stat().st_mtime_ns for p in local_run.glob("*.parquet")}
    lines = []
    tokenize(tok_cfg, opts(images, local_run), log=lines.append)
    assert any("already complete" in s for s in lines)
    assert before == {p.name: p.stat().st_mtime_ns for p in local_run.glob("*.parquet")}
    other = opts(images, local_run)
    other.variants = VariantSpec(count=K, seed=6, resolution=64)
    with pytest.raises(FileExistsError, match="--overwrite"):
        tokenize(tok_cfg, other)
    assert (local_run / "manifest.json").exists()


def test_s3_run_gives_the_local_rows(local_run, images, tok_cfg, moto_s3, tmp_path):  # noqa: F811
    import boto3
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from mvar_dist.vqvae import MultiScaleVQVAE

    endpoint, bucket = moto_s3
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for p in sorted((images / "train").rglob("*.*")):
        s3.upload_file(str(p), bucket, f"raw/train/{p.relative_to(images / 'train').as_posix()}")
    # The same weights as a checkpoint file: exercises shipping official weights to the actors.
    ckpt = MultiScaleVQVAE.from_config(tok_cfg, seed=0).save_official(tmp_path / "vae.safetensors")
    cfg = load_config("mvar_tiny", [f"tokenizer.checkpoint={ckpt}"]).tokenizer
    uri = tokenize(cfg, opts(f"s3://{bucket}/raw", f"s3://{bucket}/tokens"))
    assert uri == f"s3://{bucket}/tokens/manifest.json"
    s3_rows, local_rows = load_rows(f"s3://{bucket}/tokens"), load_rows(str(local_run))
    for key in local_rows:
        np.testing.assert_array_equal(s3_rows[key], local_rows[key])
    m = json.loads(s3.get_object(Bucket=bucket, Key="tokens/manifest.json")["Body"].read())
    assert m["tokenizer"]["random_weights"] is False
    assert m["tokenizer"]["hash"] == json.loads((local_run / "manifest.json").read_text())["tokenizer"]["hash"]
    assert m["num_rejected"] == 4 and "testing" not in json.dumps(m)
    rejects = s3.get_object(Bucket=bucket, Key="tokens/rejects.jsonl")["Body"].read().decode()
    assert all(r["path"].startswith(f"s3://{bucket}/raw/") for r in map(json.loads, rejects.splitlines()))
    assert verify(f"s3://{bucket}/tokens") == []
    # a second S3 client (pyarrow's) reads the same shard
    fs = pafs.S3FileSystem(endpoint_override=endpoint.split("//")[1], scheme="http", region="us-east-1")
    table = pq.read_table(f"{bucket}/tokens/shard-00001.parquet", filesystem=fs)
    assert table.num_rows == m["shards"][1]["rows"]


def test_interrupted_run_resumes_to_exactly_the_clean_rows(ray_address, local_run, images, tok_cfg, tmp_path):
    dest = tmp_path / "shards"
    # the launcher's command line, with a hook that kills the driver after 2 shards (exit code 75)
    cmd = [sys.executable, "tests/helpers/pretokenize_killed_after.py", "2", "--config", "mvar_tiny", "--source", str(images),
           "--dest", str(dest), "--variants", str(K), "--seed", "5", "--images-per-shard", str(PER_SHARD),
           "--batch-size", "16", "--address", ray_address]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 75, out.stdout + out.stderr
    # killed mid-way: two finished shards, a half-written temp file, and no manifest
    assert len(list(dest.glob("*.parquet"))) == 2 == len(list(dest.glob("_progress/shard-*.json")))
    assert list(dest.glob("*.tmp*")) and not (dest / "manifest.json").exists()
    assert verify(str(dest))[0].endswith("no manifest.json (the dataset is incomplete)")
    kept = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.parquet")}
    lines = []
    tokenize(tok_cfg, opts(images, dest), log=lines.append)
    assert any("(2 already done, 1 stale temp files removed)" in s for s in lines), lines
    assert all((dest / name).stat().st_mtime_ns == t for name, t in kept.items())      # not redone
    assert not list(dest.glob("*.tmp*"))
    resumed, clean = load_rows(str(dest)), load_rows(str(local_run))
    for key in clean:
        np.testing.assert_array_equal(resumed[key], clean[key])
    assert (dest / "rejects.jsonl").read_text() == (local_run / "rejects.jsonl").read_text()


def test_errors_before_any_work(images, tok_cfg, tmp_path, moto_s3):  # noqa: F811
    from mvar_dist.vqvae import MultiScaleVQVAE

    wrong = MultiScaleVQVAE.random(seed=0, vocab_size=512, z_channels=32, ch=32, ch_mult=(1, 1, 2, 2, 4),
                                   patch_nums=(1, 2, 3, 4)).save_official(tmp_path / "wrong.safetensors")
    bad_cfg = load_config("mvar_tiny", [f"tokenizer.checkpoint={wrong}"]).tokenizer
    with pytest.raises(ValueError, match="does not load with tokenizer config"):
        tokenize(bad_cfg, opts(images, tmp_path / "a"))
    missing = load_config("mvar_tiny", [f"tokenizer.checkpoint={tmp_path / 'nope.pth'}"]).tokenizer
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tokenize(missing, opts(images, tmp_path / "b"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        tokenize(tok_cfg, opts(images, tmp_path / "file" / "shards"))
    assert not list(tmp_path.rglob("*.parquet"))
    # S3 without any credentials in the standard chain
    import s3fs

    endpoint, bucket = moto_s3
    saved = {k: os.environ.pop(k, None) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    os.environ.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(PermissionError, match="AWS credentials") as e:
            tokenize(tok_cfg, opts(images, f"s3://{bucket}/nocreds"))
        assert "testing" not in str(e.value)
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})
        for k in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
            os.environ.pop(k, None)
        s3fs.S3FileSystem.clear_instance_cache()


def test_job_deals_a_class_sorted_listing_into_class_mixed_batches(ray_address, tok_cfg, tmp_path):
    """Acceptance: 100 classes listed class by class; the real job, then the real loader with a window
    of two shards: batches are near-uniform over classes (a listing-order job gave ~2 classes a shard)."""
    from mvar_dist.data import LoaderSettings, TokenLoader
    from mvar_dist.data.mixing import mix_stats

    rng = np.random.default_rng(0)
    for c in range(100):
        (tmp_path / "many" / f"c{c:03d}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"many/c{c:03d}/{i}.png")
    dest = tmp_path / "tokens"
    tokenize(tok_cfg, TokenizeOptions(source=str(tmp_path / "many"), dest=str(dest), batch_size=64, images_per_shard=20,
                                      variants=VariantSpec(count=1, seed=0, resolution=64), progress_every=1e9))
    stats = [mix_stats([lab.numpy() for lab, _ in TokenLoader(LoaderSettings(str(dest), 20, seed=s, shuffle_window=40))],
                       100) for s in (0, 1)]
    for s in stats:
        assert s.median_classes >= 0.9 * s.uniform_classes and s.median_steps >= 0.9 * s.uniform_steps, s
