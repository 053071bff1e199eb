"""TokenLoader: per-epoch coverage, elastic order, O(1) resume, held-out split, bad input (in-process)."""
from __future__ import annotations

import collections
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mvar_dist.data import LoaderSettings, ShardError, TokenLoader
from mvar_dist.data.io import ShardStore
from shard_factory import FAKE_TOKENIZER_HASH, decode, flip_byte, write_token_shards

N_IMAGES, VARIANTS, G = 62, 2, 12  # 62 images: 5 global batches of 12 per epoch, 2 images dropped


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    write_token_shards(str(root), num_images=N_IMAGES, variants=VARIANTS, images_per_shard=13, rows_per_group=8)
    return str(root)


@pytest.fixture()
def shards_copy(shards, tmp_path):
    dst = tmp_path / "tokens"
    shutil.copytree(shards, dst)
    return str(dst)


def global_sequence(uri, world_size, steps, global_batch=G, state=None, **kw):
    """Run `world_size` rank loaders in lockstep for `steps` steps; concatenated global batches."""
    loaders = [TokenLoader(LoaderSettings(uri, global_batch, rank=r, world_size=world_size, **kw))
               for r in range(world_size)]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(state)
    out = []
    while len(out) < steps:
        iters = [iter(loader) for loader in loaders]
        for parts in zip(*iters):
            assert all(p[0].shape == (global_batch // world_size,) for p in parts)
            out.append((np.concatenate([p[0].numpy() for p in parts]), np.concatenate([p[1].numpy() for p in parts])))
            if len(out) == steps:
                break
    return out, loaders[0].state_dict()


def stored_rows(uri):
    """(image, variant) -> (label, tokens) straight from the Parquet files."""
    rows = {}
    for name in sorted(os.listdir(uri)):
        if name.endswith(".parquet"):
            t = pq.read_table(os.path.join(uri, name))
            toks = np.stack(t.column("tokens").to_numpy(zero_copy_only=False))
            for label, tok in zip(t.column("label").to_pylist(), toks):
                rows[decode(tok[None])[0]] = (label, tok)
    return rows


def test_each_epoch_is_the_dataset_once_with_exact_rows(shards):
    rows = stored_rows(shards)
    loader = TokenLoader(LoaderSettings(shards, 2, shuffle_window=16, vocab_size=256, patch_nums=(1, 2, 3, 4)))
    assert len(loader) == loader.steps_per_epoch == N_IMAGES // 2
    variants_by_epoch = []
    for epoch in range(2):
        assert loader.state_dict()["epoch"] == epoch
        seen = []
        for labels_B, tokens_BL in loader:
            assert labels_B.dtype == tokens_BL.dtype == torch.int64
            for label, tok, key in zip(labels_B.tolist(), tokens_BL.numpy(), decode(tokens_BL)):
                assert label == rows[key][0] and np.array_equal(tok, rows[key][1])
                seen.append(key)
        assert sorted(i for i, _ in seen) == list(range(N_IMAGES))  # each image exactly once
        variants_by_epoch.append(dict(seen))
    assert variants_by_epoch[0] != variants_by_epoch[1]  # the variant is re-drawn per epoch
    assert set(variants_by_epoch[0].values()) == {0, 1}


def test_dropped_tail_is_a_partial_batch_and_differs_per_epoch(shards):
    seqs, state = global_sequence(shards, 1, 10, shuffle_window=16)
    assert state == {"epoch": 2, "samples_consumed": 0, "seed": 0, "global_batch": G, "num_samples": N_IMAGES}
    for epoch in range(2):
        ids = [i for _, tok in seqs[5 * epoch:5 * epoch + 5] for i, _ in decode(tok)]
        assert len(ids) == len(set(ids)) == 60
    assert [b[0].tolist() for b in seqs[:5]] != [b[0].tolist() for b in seqs[5:]]


def test_unshuffled_order_is_file_order(shards):
    ids = [i for _, tok in TokenLoader(LoaderSettings(shards, 2, shuffle=False)) for i, _ in decode(tok)]
    assert ids == list(range(N_IMAGES))


def test_order_is_a_function_of_seed_only(shards):
    a, _ = global_sequence(shards, 1, 5, seed=3)
    b, _ = global_sequence(shards, 1, 5, seed=3)
    c, _ = global_sequence(shards, 1, 5, seed=4)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_global_order_identical_for_any_world_size(shards, world_size):
    ref, _ = global_sequence(shards, 1, 10, shuffle_window=20)
    got, _ = global_sequence(shards, world_size, 10, shuffle_window=20)
    for (l_ref, t_ref), (l_got, t_got) in zip(ref, got):
        assert np.array_equal(l_ref, l_got) and np.array_equal(t_ref, t_got)


@pytest.mark.parametrize("stop_step,old_ws,new_ws", [(3, 2, 3), (5, 4, 1), (7, 3, 4)])
def test_resume_with_another_world_size_continues_the_sequence(shards, stop_step, old_ws, new_ws):
    ref, _ = global_sequence(shards, 1, 12)
    head, state = global_sequence(shards, old_ws, stop_step)
    tail, _ = global_sequence(shards, new_ws, 12 - stop_step, state=state)
    for (l_ref, t_ref), (l_got, t_got) in zip(ref, head + tail):
        assert np.array_equal(l_ref, l_got) and np.array_equal(t_ref, t_got)


def test_resume_reads_only_the_remaining_samples(shards, monkeypatch):
    gathered = []
    real_gather = ShardStore.gather
    monkeypatch.setattr(ShardStore, "gather", lambda self, shard, rows: gathered.append(len(rows)) or real_gather(self, shard, rows))
    loader = TokenLoader(LoaderSettings(shards, G, rank=1, world_size=2))
    loader.load_state_dict({"epoch": 3, "samples_consumed": 4 * G, "seed": 0, "global_batch": G})
    batches = list(loader)
    assert len(batches) == 1 and sum(gathered) == G // 2  # no replay of the 48 consumed samples
    assert loader.state_dict()["epoch"] == 4 and loader.state_dict()["samples_consumed"] == 0


def test_state_is_updated_per_batch_and_checked_on_load(shards):
    loader = TokenLoader(LoaderSettings(shards, G))
    it = iter(loader)
    next(it)
    next(it)
    assert loader.state_dict()["samples_consumed"] == 2 * G
    other = TokenLoader(LoaderSettings(shards, G, seed=1))
    with pytest.raises(ValueError, match="seed 0.*seed 1"):
        other.load_state_dict(loader.state_dict())
    with pytest.raises(ValueError, match="invalid loader state"):
        loader.load_state_dict({"epoch": 0, "samples_consumed": 999, "seed": 0})


def test_held_out_split_by_image_id(shards):
    def ids(split, seed):
        # batch 1: nothing dropped
        loader = TokenLoader(LoaderSettings(shards, 1, split=split, val_fraction=0.25, seed=seed))
        return [i for _, tok in loader for i, _ in decode(tok)], loader.num_samples

    train, n_train = ids("train", 0)
    val, n_val = ids("val", 0)
    train_other_seed, _ = ids("train", 5)
    assert n_train + n_val == N_IMAGES and 5 <= n_val <= 25
    assert len(train) == n_train and len(val) == n_val
    assert not set(train) & set(val) and set(train) | set(val) == set(range(N_IMAGES))
    assert set(train) == set(train_other_seed) and train != train_other_seed  # split independent of the seed


def test_bounded_row_group_cache(shards):
    loader = TokenLoader(LoaderSettings(shards, G, cache_bytes=1))
    for _ in loader:
        pass
    assert len(loader._store._groups) == 1  # never more than the budget (or the single group in use)


@pytest.mark.parametrize("kwargs,match", [
    (dict(global_batch=10, world_size=3), "not divisible by world_size 3"),
    (dict(global_batch=64), "62 images, fewer than one global batch of 64"),
    (dict(patch_nums=(1, 2, 4)), r"patch_nums \[1, 2, 3, 4\], the run uses \[1, 2, 4\]"),
    (dict(tokenizer_hash="0" * 64), "tokenizer ffffffffffff"),
    (dict(vocab_size=4096), "vocab_size 256, the run uses 4096"),
    (dict(split="val"), "needs val_fraction > 0"),
    (dict(rank=2, world_size=2), r"rank 2 is not in \[0, world_size=2\)"),
])
def test_bad_arguments_are_refused(shards, kwargs, match):
    kwargs.setdefault("global_batch", G)
    with pytest.raises(ValueError, match=match):
        TokenLoader(LoaderSettings(shards, **kwargs))


def test_incomplete_dataset_without_manifest(shards_copy):
    os.remove(os.path.join(shards_copy, "manifest.json"))
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        TokenLoader(LoaderSettings(shards_copy, G))


def test_missing_shard_is_named(shards_copy):
    os.remove(os.path.join(shards_copy, "shard-00003.parquet"))
    with pytest.raises(ShardError, match="shard-00003.parquet.*missing"):
        TokenLoader(LoaderSettings(shards_copy, G))


def test_truncated_shard_is_named(shards_copy):
    path = os.path.join(shards_copy, "shard-00001.parquet")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-100])
    with pytest.raises(ShardError, match="shard-00001.parquet.*truncated"):
        TokenLoader(LoaderSettings(shards_copy, G))


@pytest.mark.parametrize("where", [0.25, 0.5, 0.75])
def test_corrupt_shard_fails_loudly_naming_it(shards_copy, where):
    path = os.path.join(shards_copy, "shard-00002.parquet")
    flip_byte(path, where)
    loader = TokenLoader(LoaderSettings(shards_copy, G))
    with pytest.raises(ShardError, match="shard-00002.parquet.*corrupt"):
        for _ in loader:
            pass


def test_corrupt_shard_is_caught_by_page_checksums_alone(shards_copy):
    path = os.path.join(shards_copy, "shard-00002.parquet")
    flip_byte(path)
    loader = TokenLoader(LoaderSettings(shards_copy, G, verify_sha256=False))
    with pytest.raises(ShardError, match="shard-00002.parquet.*CRC"):
        for _ in loader:
            pass


def test_shard_image_counts_are_checked_against_the_manifest(tmp_path):
    uri = str(tmp_path / "t")
    m = write_token_shards(uri, num_images=26, variants=2, images_per_shard=13)
    m.variants["count"], m.num_images = 1, 0  # wrong K, no total: rows/K is trusted until a shard is read
    (tmp_path / "t" / "manifest.json").write_text(m.to_json())
    with pytest.raises(ShardError, match="holds 13 images.*manifest implies 26"):
        next(iter(TokenLoader(LoaderSettings(uri, 4))))
    m.num_images = 30  # a total is known: the shards are scanned at start and disagree
    (tmp_path / "t" / "manifest.json").write_text(m.to_json())
    with pytest.raises(ShardError, match="records 30 images, its shards hold 26"):
        TokenLoader(LoaderSettings(uri, 4))
    m.num_images = 26  # wrong K but right total: the scan finds the true counts
    (tmp_path / "t" / "manifest.json").write_text(m.to_json())
    assert sorted(i for _, tok in TokenLoader(LoaderSettings(uri, 2)) for i, _ in decode(tok)) == list(range(26))


def test_token_ids_outside_the_vocabulary(tmp_path):
    uri = str(tmp_path / "t")
    m = write_token_shards(uri, num_images=24, vocab_size=256, tokenizer_hash=FAKE_TOKENIZER_HASH)
    m.tokenizer["vocab_size"] = 200
    (tmp_path / "t" / "manifest.json").write_text(m.to_json())
    loader = TokenLoader(LoaderSettings(uri, 24, vocab_size=200))
    with pytest.raises(ShardError, match=r"token id \d+ >= vocab_size 200"):
        next(iter(loader))


def test_variant_choice_uses_every_variant(tmp_path):
    uri = str(tmp_path / "t")
    write_token_shards(uri, num_images=30, variants=4, images_per_shard=7)
    counts = collections.Counter(v for _, tok in TokenLoader(LoaderSettings(uri, 30)) for _, v in decode(tok))
    assert set(counts) == {0, 1, 2, 3}


def test_reads_shards_written_by_the_tokenisation_job(tmp_path):
    writer = pytest.importorskip("mvar_dist.data_pipeline.writer")
    from mvar_dist.data.shards import Manifest, ShardInfo, sha256_bytes

    rng, infos = np.random.default_rng(0), []
    for s in range(2):
        images = [(i, v) for i in range(10 * s, 10 * s + 10) for v in range(3)]
        tokens_NL = rng.integers(0, 256, size=(len(images), 30)).astype(np.uint16)
        tokens_NL[:, 0], tokens_NL[:, 1], tokens_NL[:, 2] = [v for _, v in images], 0, [i for i, _ in images]
        data = writer.shard_bytes([f"c/{i}.png" for i, _ in images], [i % 10 for i, _ in images],
                                  [v for _, v in images], tokens_NL, row_group_size=7)
        (tmp_path / writer.shard_name(s)).write_bytes(data)
        infos.append(ShardInfo(writer.shard_name(s), len(images), sha256_bytes(data), len(data)))
    m = Manifest(tokenizer={"hash": "h", "vocab_size": 256}, patch_nums=[1, 2, 3, 4], resolution=64,
                 variants={"count": 3}, num_classes=10, shards=infos, num_images=20)
    (tmp_path / "manifest.json").write_text(m.to_json())
    loader = TokenLoader(LoaderSettings(str(tmp_path), 4, vocab_size=256, tokenizer_hash="h"))
    seen = [key for _, tok in loader for key in decode(tok)]
    assert sorted(i for i, _ in seen) == list(range(20)) and {v for _, v in seen} <= {0, 1, 2}
