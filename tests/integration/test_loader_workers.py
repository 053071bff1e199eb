"""TokenLoader worker processes: persistent across epochs, same sequence, none left behind."""
from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mvar_dist.data import LoaderSettings, ShardError, TokenLoader
from mvar_dist.data.order import variant_choice, variant_choices
from test_loader import G, shards  # noqa: F401  (fixture)
from shard_factory import flip_byte

STEPS_PER_EPOCH = 5  # 62 images // 12


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def passes(loader, n_passes):
    """`n_passes` full `for` passes (one epoch each); batches as numpy plus the worker pids seen per pass."""
    out, pids = [], []
    for _ in range(n_passes):
        for labels_B, tokens_BL in loader:
            out.append((labels_B.numpy(), tokens_BL.numpy()))
        pids.append(list(loader.worker_pids))
    return out, pids


def same(a, b):
    assert len(a) == len(b)
    for (l_a, t_a), (l_b, t_b) in zip(a, b):
        assert np.array_equal(l_a, l_b) and np.array_equal(t_a, t_b)


def test_batched_variant_choice_matches_the_reference():
    # the loader uses the batched form; the per-image one defines the order that resumes rely on
    ids = [f"n01440764_{i}" for i in range(300)] + ["", "ü/ß"]
    n_variants = np.arange(len(ids)) % 10 + 1
    for seed, epoch in [(0, 0), (7, 3)]:
        ref = [variant_choice(seed, epoch, i, int(n)) for i, n in zip(ids, n_variants)]
        assert variant_choices(seed, epoch, ids, n_variants).tolist() == ref


@pytest.mark.slow
def test_workers_persist_across_epochs_and_keep_the_sequence(shards):  # noqa: F811
    ref, _ = passes(TokenLoader(LoaderSettings(shards, G, shuffle_window=36)), 3)
    loader = TokenLoader(LoaderSettings(shards, G, shuffle_window=36, num_workers=2))  # runs of 3 batches per worker
    got, pids = passes(loader, 3)
    same(ref, got)
    assert len(got) == 3 * STEPS_PER_EPOCH and loader.state_dict()["epoch"] == 3
    assert len(pids[0]) == 2 and pids[0] == pids[1] == pids[2]  # not restarted per epoch
    assert all(alive(pid) for pid in pids[0])
    loader.close()
    assert loader.worker_pids == [] and not any(alive(pid) for pid in pids[0])
    # still usable after close(): new workers, and the order continues with epoch 3
    more, new_pids = passes(loader, 1)
    same(passes(TokenLoader(LoaderSettings(shards, G, shuffle_window=36)), 4)[0][-STEPS_PER_EPOCH:], more)
    assert new_pids[0] and not set(new_pids[0]) & set(pids[0])
    loader.close()
    assert not any(alive(pid) for pid in new_pids[0])


@pytest.mark.slow
def test_abandoned_pass_is_preempted_and_the_order_continues(shards):  # noqa: F811
    ref, _ = passes(TokenLoader(LoaderSettings(shards, G, shuffle_window=24)), 2)
    loader = TokenLoader(LoaderSettings(shards, G, shuffle_window=24, num_workers=2, prefetch=1))
    got = []
    first = iter(loader)
    for _ in range(2):  # leave the workers with a half-consumed epoch and full queues
        labels_B, tokens_BL = next(first)
        got.append((labels_B.numpy(), tokens_BL.numpy()))
    second = iter(loader)  # resumes from state (epoch 0, 2 batches consumed)
    rest = [(l.numpy(), t.numpy()) for l, t in second] + passes(loader, 1)[0]
    same(ref, got + rest)
    with pytest.raises(RuntimeError, match="superseded"):
        next(first)
    loader.close()


@pytest.mark.slow
def test_deleting_the_loader_stops_its_workers(shards):  # noqa: F811
    loader = TokenLoader(LoaderSettings(shards, G, num_workers=2))
    it = iter(loader)
    next(it)  # mid-epoch, workers busy
    pids = loader.worker_pids
    assert len(pids) == 2 and all(alive(p) for p in pids)
    del it, loader
    gc.collect()
    assert not any(alive(p) for p in pids)


@pytest.mark.slow
def test_a_worker_error_stops_the_workers_and_names_the_shard(shards, tmp_path):  # noqa: F811
    uri = str(tmp_path / "t")
    shutil.copytree(shards, uri)
    path = os.path.join(uri, "shard-00002.parquet")
    flip_byte(path, 1 / 3)
    loader = TokenLoader(LoaderSettings(uri, G, num_workers=2, shuffle_window=12))
    seen = []
    with pytest.raises(ShardError, match="shard-00002.parquet") as err:
        for _ in loader:
            seen = loader.worker_pids or seen
    assert "raised in token loader worker" in "".join(getattr(err.value, "__notes__", []))
    assert loader.worker_pids == [] and seen and not any(alive(p) for p in seen)


@pytest.mark.slow
def test_workers_exit_when_their_parent_is_killed(shards):  # noqa: F811
    script = ("import sys, time\n"
              "from mvar_dist.data import LoaderSettings, TokenLoader\n"
              f"loader = TokenLoader(LoaderSettings({shards!r}, {G}, num_workers=2))\n"
              "it = iter(loader); next(it)\n"
              "print(*loader.worker_pids, flush=True)\n"
              "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        parent.send_signal(signal.SIGKILL)  # no finalizers run: the workers must notice on their own
        parent.wait()
    deadline = time.monotonic() + 30  # they poll for a new parent every 0.5 s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in pids)
