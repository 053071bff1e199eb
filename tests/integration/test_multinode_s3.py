"""Multi-node on one machine with an s3:// checkpoint root (moto on 127.0.0.1): one node killed mid-upload.

Two DeepSpeed `--no_ssh` "nodes", one gloo rank each, node-local `out_dir` and `ckpt.stage_dir`, with
the helpers and the one-node reference of test_multinode.py. A test hook (tests/helpers/train_with_paused_upload.py)
makes node 1 pause just before uploading its files of the last step; the test SIGKILLs node 1's process
group (only what it started), then checks node 0 exits, no marker, and an exact resume of both nodes.
"""
from __future__ import annotations

import signal
import time
from typing import Sequence

import pytest
from s3_utils import free_port, moto_s3  # noqa: F401  (fixture)
from test_multinode import (MAX_STEPS, TIMEOUT, TRAIN, Node, _env, _logs, _wait_all, assert_same_losses,  # noqa: F401
                            deepspeed_node, hostfile, nodes, reference, shards, tok_hash)


PAUSED_UPLOAD = "tests/helpers/train_with_paused_upload.py"  # the launcher with a hook that pauses one rank's upload


def _wait_for(cond, what: str, started: Sequence[Node], timeout: float = TIMEOUT) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline or any(n.proc.poll() is not None for n in started):
            pytest.fail(f"gave up waiting for {what}:\n{_logs(started)}")
        time.sleep(0.1)


@pytest.mark.slow
def test_node_killed_mid_upload_leaves_no_marker_and_resume_continues(reference, shards, moto_s3, tmp_path):
    """ckpt.dir on S3, one node SIGKILLed while saving step 6: node 0 has uploaded its files and waits for
    node 1's report; it must fail (not hang), step 6 gets no marker, and both nodes restarted with
    `--resume auto` continue from step 3 with the uninterrupted run's losses."""
    from mvar_dist.runs.storage import RemoteRoot

    root = f"s3://{moto_s3[1]}/killed/checkpoints"
    hosts, flag = hostfile(tmp_path), tmp_path / "node1_uploading"

    def specs(resume: bool):
        port, out = free_port(), []
        for r in (0, 1):
            args = [*TRAIN, f"data.shards={shards}", f"out_dir={tmp_path / f'node{r}' / 'run'}", f"ckpt.dir={root}",
                    f"ckpt.stage_dir={tmp_path / f'node{r}' / 'stage'}"]
            argv = (deepspeed_node(r, hosts, port, [*args, "--resume", "auto"]) if resume else
                    deepspeed_node(r, hosts, port, [str(MAX_STEPS), "1", str(flag), *args], script=PAUSED_UPLOAD))
            out.append((argv, tmp_path / f"node{r}{'.resumed' if resume else ''}.log", _env()))
        return out

    store = RemoteRoot(root)
    last = f"{store.base}/step_{MAX_STEPS:08d}"
    with nodes(specs(resume=False)) as started:
        _wait_for(flag.is_file, "rank 1 to reach its upload", started)
        # Node 0 uploads its own files (the RNG file last), then waits in the gather for node 1's report.
        _wait_for(lambda: store.fs.exists(f"{last}/rng/rank_00000.pt"), "rank 0's upload", started, timeout=60)
        started[1].signal_group(signal.SIGKILL)  # node 1 dies mid-save: launcher and trainer, no clean-up
        t0 = time.time()
        rc0, rc1 = _wait_all(started, timeout=120)
        took = time.time() - t0
        log0 = started[0].text()
    assert rc0 != 0 and rc1 == -signal.SIGKILL, _logs(started)
    assert took < 60, f"node 0 took {took:.0f} s to notice"
    assert f"[train] checkpoint {root}/step_{MAX_STEPS:08d}" not in log0  # never published
    assert f"checkpoint step {MAX_STEPS} not published (no marker): collecting the ranks' reports failed" in log0
    store.fs.invalidate_cache()
    assert store.names() == ["step_00000003"]  # step 6: partial upload, no marker
    assert f"step_{MAX_STEPS:08d}" in store.names(complete_only=False)
    assert not store.fs.exists(f"{last}/COMPLETE")

    with nodes(specs(resume=True)) as started:
        rcs = _wait_all(started)
        assert rcs == [0, 0], _logs(started)
        log0 = started[0].text()
    assert f"resumed from {root}/step_00000003 (step 3)" in log0, log0[-3000:]
    assert_same_losses(tmp_path / "node0" / "run", reference, 0)  # 1-3 before the kill, 4-6 resumed
    assert_same_losses(tmp_path / "node1" / "run", reference, 1)
    assert store.names() == ["step_00000003", f"step_{MAX_STEPS:08d}"]
    assert store.problem(f"step_{MAX_STEPS:08d}", "hash") is None
