"""Damaged and failed checkpoints of a real 2-rank DeepSpeed run (gloo, tiny M-VAR), local and on S3.

The issue's user report: truncating one rank's optimizer file and running `--resume auto` crashed
both ranks. Now the marker's file list catches it before loading, the message names the folder and
the file, the run falls back to the previous checkpoint (within ckpt.max_fallback_steps) and
continues with the uninterrupted run's losses. Cheaper cases are in test_checkpoint_verify.py.
"""
from __future__ import annotations

import json
import shutil

import pytest
from s3_utils import moto_s3  # noqa: F401  (fixture)
from test_train_loop import COMMON, MAX_STEPS, REPO, _losses, _make_token_shards, run_train

pytestmark = pytest.mark.slow
FAILED_UPLOAD = REPO / "tests" / "helpers" / "train_with_failed_upload.py"
OPTIM1 = "ds/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    shards = _make_token_shards(tmp_path_factory.mktemp("tokens"))
    out = tmp_path_factory.mktemp("ref")
    p = run_train(2, [*COMMON, f"data.shards={shards}", f"out_dir={out}"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return shards, out


def test_marker_lists_every_rank_file(reference):
    from mvar_dist.train import checkpoint as ck
    from mvar_dist.runs import manifest as mf

    folder = reference[1] / "checkpoints" / "step_00000012"
    files = json.loads((folder / ck.MARKER).read_text())["files"]
    assert files[OPTIM1]["rank"] == 1 and files["rng/rank_00001.pt"]["rank"] == 1
    assert files["ds/state/zero_pp_rank_0_mp_rank_00_model_states.pt"]["rank"] == 0
    # per-rank = what each rank's DeepSpeed engine saved (SaveRecorder), its RNG and EMA files; the rest is shared
    per_rank = {rel: mf.owner(rel, e) for rel, e in files.items() if mf.owner(rel, e) is not None}
    assert per_rank == {**{f"ds/state/zero_pp_rank_{r}_mp_rank_00_{k}_states.pt": r for r in (0, 1)
                           for k in ("model", "optim")},
                        **{f"rng/rank_{r:05d}.pt": r for r in (0, 1)}, **{f"ema/rank_{r:05d}.safetensors": r for r in (0, 1)}}
    assert {"meta.json", "config.yaml", "loader.json", "metrics.json", "model.safetensors"} <= set(files)
    assert sorted(files) == mf.folder_files(folder)  # everything the save wrote, nothing else
    assert mf.verify_folder(folder, "hash") is None


def test_truncated_shard_falls_back_with_exact_losses(reference, tmp_path):
    shards, ref_out = reference
    out = tmp_path / "run"
    shutil.copytree(ref_out / "checkpoints", out / "checkpoints")
    bad = out / "checkpoints" / "step_00000012" / OPTIM1
    size = bad.stat().st_size
    with open(bad, "r+b") as f:
        f.truncate(size // 2)
    damage = f"checkpoint step_00000012 is damaged: {OPTIM1} has {size // 2} bytes, the marker says {size}"
    args = ["--resume", "auto", *COMMON, f"data.shards={shards}", f"out_dir={out}"]

    p = run_train(2, [*args, "ckpt.max_fallback_steps=2"])  # 4 steps back is too far: both ranks refuse
    assert p.returncode != 0, p.stdout[-3000:] + p.stderr[-3000:]
    # Each rank printed the same error (torchrun then stops the slower one and exits 1), no gloo crash.
    assert p.stderr.count(damage) == 2 and "is 4 steps before step_00000012" in p.stderr, p.stderr[-3000:]
    assert "closed by peer" not in p.stderr and "exitcode  : 2" in p.stderr, p.stderr[-3000:]
    assert (out / "checkpoints" / "step_00000012").is_dir()

    p = run_train(2, args)  # the default limit is one save interval (ckpt.every_steps=4)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert damage in p.stdout and "falling back to step_00000008" in p.stdout
    assert f"resumed from {out / 'checkpoints' / 'step_00000008'}" in p.stdout
    kept = out / "checkpoints" / "damaged.step_00000012"
    assert (kept / OPTIM1).stat().st_size == size // 2  # set aside, never deleted
    ref, got = _losses(ref_out), _losses(out)
    assert sorted(got) == list(range(9, MAX_STEPS + 1))
    for s in got:
        assert got[s]["loss"] == pytest.approx(ref[s]["loss"], abs=1e-6), s
        assert got[s]["fingerprint"] == ref[s]["fingerprint"]


def test_s3_failed_upload_leaves_no_marker_and_resume_continues(reference, moto_s3, tmp_path):
    """ckpt.dir on S3 (moto on 127.0.0.1): rank 1's upload of the last checkpoint fails, so step 12 gets
    no marker; `--resume auto` then downloads step 8 on each rank and continues with the same losses."""
    from mvar_dist.runs.storage import RemoteRoot

    shards, ref_out = reference
    root = f"s3://{moto_s3[1]}/run/checkpoints"
    out = tmp_path / "s3run"
    args = [*COMMON, f"data.shards={shards}", f"out_dir={out}", f"ckpt.dir={root}", "ckpt.keep_last=1"]
    p = run_train(2, ["12", "1", *args], script=FAILED_UPLOAD)
    assert p.returncode != 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert ("checkpoint step 12 not published (no marker): rank 1: upload failed (OSError: injected upload "
            "failure") in p.stderr, p.stderr[-3000:]
    store = RemoteRoot(root)
    assert store.names() == ["step_00000008"]  # step 4 removed by retention (keep_last=1), 12 unmarked
    assert store.names(complete_only=False) == ["step_00000008", "step_00000012"]
    assert store.problem("step_00000008", "hash") is None

    p = run_train(2, ["--resume", "auto", *args])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"resumed from {root}/step_00000008 (step 8)" in p.stdout
    assert "EMA restored from" in p.stdout  # each rank downloaded its own EMA file with its shards
    assert store.problem("step_00000012", "hash") is None and \
        {f"ema/rank_0000{r}.safetensors" for r in (0, 1)} <= set(store.sizes("step_00000012"))
    ref, got = _losses(ref_out), _losses(out)
    assert sorted(got) == list(range(1, MAX_STEPS + 1))
    for s in got:  # 1-8 from the first run, 9-12 resumed: both as the local uninterrupted run
        assert got[s]["loss"] == pytest.approx(ref[s]["loss"], abs=1e-6), s
        assert got[s]["fingerprint"] == ref[s]["fingerprint"]
    assert store.names(complete_only=False) == ["step_00000012"]  # the partial upload was cleaned, 8 retired
    assert store.problem("step_00000012", "hash") is None
    assert not any((out / "ckpt_stage").glob(".tmp.*"))  # staged copies are removed after upload


def test_s3_checkpoint_resumed_on_one_rank(reference, moto_s3, tmp_path):
    """A 2-rank run saving to S3, resumed on 1 rank: rank 0 downloads ds/state, converts it once and
    uploads ds/universal (with its own marker); the losses continue as the uninterrupted 2-rank run's."""
    from mvar_dist.train import checkpoint as ck
    from mvar_dist.runs.storage import RemoteRoot

    shards, ref_out = reference
    root = f"s3://{moto_s3[1]}/elastic/checkpoints"
    out = tmp_path / "two"
    p = run_train(2, [*COMMON, f"data.shards={shards}", f"out_dir={out}", f"ckpt.dir={root}"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    store = RemoteRoot(root)
    assert store.names() == ["step_00000008", "step_00000012"]

    one = tmp_path / "one"
    # micro batch 4 on one rank = 2 accumulation steps for the same global batch of 8; another root to save in.
    args = ["--resume", f"{root}/step_00000008", *COMMON, f"data.shards={shards}", f"out_dir={one}",
            f"ckpt.dir=s3://{moto_s3[1]}/elastic1/checkpoints", "optim.micro_batch=4"]
    p = run_train(1, args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"converting {root}/step_00000008 to the universal format" in p.stdout
    assert "universal conversion from world size 2" in p.stdout and "x accum 2" in p.stdout
    assert "EMA restored from" in p.stdout  # from both ranks' EMA files, re-cut for one rank
    assert store.fs.exists(f"{store.base}/step_00000008/ds/universal/{ck.MARKER}")  # cached for later resumes
    assert store.problem("step_00000008", "hash") is None  # the marker still verifies the folder
    ref, got = _losses(ref_out), _losses(one)
    assert sorted(got) == list(range(9, MAX_STEPS + 1))
    for s in got:
        assert got[s]["fingerprint"] == ref[s]["fingerprint"], s  # same samples in the same global batches
        assert got[s]["loss"] == pytest.approx(ref[s]["loss"], abs=1e-5), s
    print("max |loss - ref| at 2->1 from S3:", max(abs(got[s]["loss"] - ref[s]["loss"]) for s in got))

    p = run_train(1, [*args, f"out_dir={tmp_path / 'again'}", f"ckpt.dir=s3://{moto_s3[1]}/elastic2/checkpoints"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "converting" not in p.stdout and "universal conversion from world size 2" in p.stdout  # the cached copy
    again = _losses(tmp_path / "again")
    assert all(again[s]["loss"] == got[s]["loss"] for s in got)
