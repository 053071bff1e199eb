"""TokenLoader with worker processes and on S3 (moto server on 127.0.0.1): same global sequence."""
from __future__ import annotations

import os

import numpy as np
import pytest

from mvar_dist.data import LoaderSettings, ShardError, TokenLoader
from mvar_dist.data.io import resolve_fs
from s3_utils import moto_s3  # noqa: F401  (fixture)
from shard_factory import flip_byte, write_token_shards
from test_loader import G, N_IMAGES, global_sequence, shards  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def same(a, b):
    assert len(a) == len(b)
    for (l_a, t_a), (l_b, t_b) in zip(a, b):
        assert np.array_equal(l_a, l_b) and np.array_equal(t_a, t_b)


@pytest.mark.parametrize("world_size,workers,window", [(1, 1, 20), (1, 2, 36), (2, 2, 20)])
def test_worker_count_does_not_change_the_order(shards, world_size, workers, window):  # noqa: F811
    # window 36 = runs of 3 batches per worker: exercises putting the workers' batches back in order
    ref, _ = global_sequence(shards, 1, 7, shuffle_window=window)  # 7 steps: crosses into epoch 1
    got, state = global_sequence(shards, world_size, 7, shuffle_window=window, num_workers=workers)
    same(ref, got)
    assert state["epoch"] == 1 and state["samples_consumed"] == 2 * G


def test_resume_from_workers_onto_another_world_size(shards):  # noqa: F811
    ref, _ = global_sequence(shards, 1, 8)
    head, state = global_sequence(shards, 2, 3, num_workers=2)
    tail, _ = global_sequence(shards, 3, 5, state=state, num_workers=1)
    same(ref, head + tail)


def test_corrupt_shard_in_a_worker_is_named(shards, tmp_path):  # noqa: F811
    import shutil

    uri = str(tmp_path / "t")
    shutil.copytree(shards, uri)
    path = os.path.join(uri, "shard-00004.parquet")
    flip_byte(path, 1 / 3)
    with pytest.raises(ShardError, match="shard-00004.parquet"):
        for _ in TokenLoader(LoaderSettings(uri, G, num_workers=2)):
            pass


@pytest.fixture(scope="module")
def s3_shards(moto_s3):  # noqa: F811
    _, bucket = moto_s3
    uri = f"s3://{bucket}/tokens"
    write_token_shards(uri, num_images=N_IMAGES, variants=2, images_per_shard=13, rows_per_group=8)
    return uri


def test_s3_and_local_give_the_same_sequence(shards, s3_shards, tmp_path):  # noqa: F811
    ref, _ = global_sequence(shards, 1, 7, shuffle_window=20)
    same(ref, global_sequence(s3_shards, 2, 7, shuffle_window=20)[0])
    cache = tmp_path / "cache"
    same(ref, global_sequence(s3_shards, 3, 7, shuffle_window=20, cache_dir=str(cache), num_workers=1)[0])
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 5 and all(name.endswith(".parquet") and len(name) == 64 + 8 for name in cached)


def test_corrupt_s3_shard_is_named(s3_shards, tmp_path):
    fs, root = resolve_fs(s3_shards)
    good = fs.cat_file(f"{root}/shard-00001.parquet")
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    fs.pipe_file(f"{root}/shard-00001.parquet", bytes(bad))
    try:
        with pytest.raises(ShardError, match="shard-00001.parquet from s3:.* fails its manifest sha256"):
            for _ in TokenLoader(LoaderSettings(s3_shards, G, cache_dir=str(tmp_path / "cache"))):
                pass
        with pytest.raises(ShardError, match="shard-00001.parquet.*corrupt"):
            for _ in TokenLoader(LoaderSettings(s3_shards, G)):
                pass
    finally:
        fs.pipe_file(f"{root}/shard-00001.parquet", good)
